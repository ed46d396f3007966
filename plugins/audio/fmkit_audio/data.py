"""Audio datasets as log-mel states: ``{"mel": [M, T], "cond": []}``, batches padded with ``mask`` [B, 1, T].

Three sources, one in-memory :class:`MelDataset`:

- ``audio_folder``: any folder of WAV/FLAC files, with an optional labels CSV (``path,label[,split]``);
- ``fsdd``: the Free Spoken Digit Dataset (Jackson et al., Zenodo 2018), 8 kHz, official split
  recordings 0-4 test / 5-49 train; read from a local root or downloaded from GitHub;
- ``speechcommands``: torchaudio's SPEECHCOMMANDS class (Warden 2018); ``digits_only`` keeps its
  ten digit words (SC09, the DiffWave/SaShiMi benchmark).

Waveforms are resampled to the front end's rate, optionally trimmed of leading/trailing silence and
cropped, then turned into log-mels; the global mean/std are computed once from the training split,
cached, and handed to models, metrics and writers in ``info.meta`` (with ``peak_level``, the training
clips' typical peak, the level samples are written at).
"""

from __future__ import annotations

import csv
import io
import os
import re
import tarfile
import urllib.request
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from fmkit.plugin import DataError, DataInfo, Dataset, FieldInfo, State, bucketed_batches, examples_of_classes, note
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fmkit_audio.levels import typical_peak
from fmkit_audio.mel import FrontEndOptions, MelFrontEnd, MelStats, settings_key

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{FSDD_COMMIT}.tar.gz"
AUDIO_SUFFIXES = (".wav", ".flac")


def cache_dir() -> Path:
    """Where derived files (statistics, classifiers, downloads) live: ``$FMKIT_CACHE_DIR/audio`` or
    ``~/.cache/fmkit/audio``."""
    root = os.environ.get("FMKIT_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "fmkit") / "audio"


def data_root(sub: str, root: str | None) -> Path | None:
    """``root`` if given, else ``$FMKIT_DATA_DIR/<sub>`` when that variable is set."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("FMKIT_DATA_DIR")
    return Path(env) / sub if env else None


# ---------------------------------------------------------------------------------------------
class CommonOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mel: FrontEndOptions = Field(default_factory=FrontEndOptions, description="log-mel front end")
    trim_db: float | None = Field(40.0, gt=0.0, description="trim leading/trailing frames quieter than the "
                                  "loudest by this many dB (20 ms RMS frames); null keeps the silence")
    max_seconds: float | None = Field(1.0, gt=0.0, description="crop longer clips to this length (after trimming)")
    peak_normalise: bool = Field(True, description="scale each clip to a peak of 0.95")
    frame_multiple: int = Field(4, ge=1, description="pad batches to a multiple of this many frames (the "
                                "U-Net's total downsampling)")
    limit: int | None = Field(None, ge=1, description="keep only N clips of each split, the classes taken in turn "
                              "(the first clip of each class, then the second, ...): tests, pilots")
    stats: str | None = Field(None, description="normalisation statistics JSON to use (null: compute them from "
                              "the training split once and cache them)")


class FSDDOptions(CommonOptions):
    root: str | None = Field(None, description="folder with recordings/ or fsdd_recordings.tar.gz "
                             "(default $FMKIT_DATA_DIR/fsdd)")
    download: bool = Field(False, description="fetch the recordings from GitHub into the cache when no root has them")
    split: Literal["train", "test"] = "train"


class FolderOptions(CommonOptions):
    root: str = Field(..., description="folder of WAV/FLAC files (searched recursively)")
    labels: str | None = Field(None, description="CSV with columns path,label[,split] (paths relative to root); "
                               "null: unlabelled, unconditional")
    split: Literal["train", "test"] = "train"


class SpeechCommandsOptions(CommonOptions):
    root: str | None = Field(None, description="torchaudio's root folder (default $FMKIT_DATA_DIR/speechcommands)")
    download: bool = False
    digits_only: bool = Field(True, description="SC09: the ten digit words only")
    split: Literal["train", "test"] = "train"


# ---------------------------------------------------------------------------------------------
@dataclass
class Clip:
    """One recording before the front end: float waveform [L], its rate, label (or -1), split."""

    wav: Tensor
    sample_rate: int
    label: int
    split: str
    name: str


def read_audio(data: bytes | Path, name: str) -> tuple[Tensor, int]:
    """Mono float32 waveform and rate, via soundfile (WAV/FLAC), with a DataError on a bad file."""
    import soundfile as sf

    try:
        arr, sr = sf.read(io.BytesIO(data) if isinstance(data, bytes) else str(data), dtype="float32",
                          always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile's errors are RuntimeError/LibsndfileError
        # libsndfile names an in-memory file (an archive member) `<_io.BytesIO object at 0x...>`: name it
        text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", Path(name).name, str(exc))
        raise DataError(f"cannot read audio file {Path(name).name}: {text}", where=name,
                        fix="check that the file is a complete WAV or FLAC file (re-copy or re-download it)") from None
    return torch.from_numpy(arr.mean(axis=1).copy()), int(sr)


def balanced_subset(clips: Sequence[Clip], n: int) -> list[Clip]:
    """The first ``n`` clips taking the classes in turn (each class's clips in their given order), so a
    small limit keeps every class: FSDD's clips are sorted by digit, and its first 50 are all zeros."""
    by_label: dict[int, list[Clip]] = {}
    for c in clips:
        by_label.setdefault(c.label, []).append(c)
    queues = [by_label[k] for k in sorted(by_label)]
    out: list[Clip] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        for q in queues:
            if rank < len(q):
                out.append(q[rank])
                if len(out) == n:
                    return out
    return out


def prepare(clip: Clip, opts: CommonOptions) -> Tensor:
    """Resample, trim silence, crop and peak-normalise one clip: float waveform at the front end's rate.
    A clip too short for the front end's window (its STFT pads by n_fft / 2 on each side by reflection)
    is refused, naming it."""
    import torchaudio

    wav, sr = clip.wav, opts.mel.sample_rate
    if clip.sample_rate != sr:
        wav = torchaudio.functional.resample(wav, clip.sample_rate, sr)
    if opts.trim_db is not None and wav.numel() > 0:
        win = max(1, int(0.02 * sr))
        n = wav.numel() // win
        if n >= 2:
            rms = wav[: n * win].reshape(n, win).pow(2).mean(1).sqrt()
            keep = (rms >= rms.max() * 10 ** (-opts.trim_db / 20)).nonzero().flatten()
            a, b = int(keep[0]) * win, min(wav.numel(), (int(keep[-1]) + 1) * win)
            wav = wav[a:b]
    if opts.max_seconds is not None:
        wav = wav[: int(opts.max_seconds * sr)]
    if opts.peak_normalise:
        peak = wav.abs().max() if wav.numel() else torch.tensor(0.0)
        if peak > 0:
            wav = wav * (0.95 / peak)
    need = opts.mel.n_fft // 2 + 1
    if wav.numel() < need:
        trimmed = " after trimming its silence (data.trim_db)" if opts.trim_db is not None else ""
        raise DataError(f"audio file {clip.name} is too short: {wav.numel()} samples at {sr} Hz{trimmed}; the mel "
                        f"front end needs at least {need} (n_fft {opts.mel.n_fft} / 2 + 1)", where=clip.name,
                        fix="remove the file from the data (or re-record it); a recording of a word lasts ~0.3 s")
    return wav


# ---------------------------------------------------------------------------------------------
class MelDataset(Dataset):
    """Log-mel examples of one split, normalised by the training split's statistics.

    ``reference()`` draws from the *other* split when it has one (held-out test data for metrics of a
    run trained on ``train``); ``template()`` pads to ``max_frames`` so that every generation chunk
    has the same width.

    Args:
        clips: the recordings of every split (each clip names its own).
        opts: the front end, trimming, cropping, limit and statistics settings.
        split: the split this dataset serves, ``train`` or ``test``.
        num_classes: number of labels K (labels 0..K-1); None: unlabelled, unconditional.
        class_names: the name of each label, in label order.
        key: a hash of the clips and settings, naming the cached normalisation statistics.
        name: the dataset's name in errors and provenance.
    """

    def __init__(self, clips: Sequence[Clip], opts: CommonOptions, *, split: str, num_classes: int | None,
                 class_names: Sequence[str], key: str, name: str) -> None:
        self.opts = opts
        self.front = MelFrontEnd(opts.mel)
        by_split: dict[str, list[Clip]] = {}
        for c in clips:
            by_split.setdefault(c.split, []).append(c)
        if split not in by_split:
            raise DataError(f"dataset {name!r} has no clips in split {split!r} (it has {sorted(by_split) or 'none'})",
                            where=name, fix="check the data folder, or choose another split")
        mels, labels, peaks = {}, {}, {}
        with torch.no_grad():
            for s, cs in by_split.items():
                if opts.limit is not None:
                    cs = balanced_subset(cs, opts.limit)
                got = [(self.front(w), float(w.abs().max())) for w in (prepare(c, opts) for c in cs)]
                mels[s], peaks[s] = [m for m, _ in got], [p for _, p in got]
                labels[s] = torch.tensor([c.label for c in cs], dtype=torch.long)
        train = "train" if "train" in mels else split
        self.stats = self._stats(mels[train], key)
        self.split, self.name = split, name
        self.num_classes = num_classes
        self.mels = [self.stats.normalise(m) for m in mels[split]]
        self.labels = labels[split]
        other = next((s for s in ("test", "train") if s != split and s in mels), None)
        self.ref_mels = [self.stats.normalise(m) for m in mels[other]] if other else self.mels
        self.ref_labels = labels[other] if other else self.labels
        self.ref_split = other or split
        self.lengths = np.array([m.shape[-1] for m in self.mels], dtype=np.int64)
        fm = opts.frame_multiple
        longest = max(int(self.lengths.max()), max(m.shape[-1] for m in self.ref_mels))
        self.max_frames = -(-longest // fm) * fm
        self.key = key
        self.info = DataInfo(
            fields={"mel": FieldInfo((opts.mel.n_mels, None))},
            num_cond_classes=num_classes,
            has_mask=True,
            meta={"modality": "audio", "name": name, "key": key, "front_end": opts.mel.model_dump(),
                  "mel_mean": self.stats.mean, "mel_std": self.stats.std, "mel_frames": self.stats.frames,
                  "max_frames": self.max_frames,
                  "frame_multiple": fm, "class_names": list(class_names), "sample_rate": opts.mel.sample_rate,
                  "hop_length": opts.mel.hop_length, "likelihood": "continuous",
                  "peak_level": typical_peak(peaks[train])},  # the level WAVs are written at (levels.py)
        )

    def _stats(self, train_mels: list[Tensor], key: str) -> MelStats:
        if self.opts.stats is not None:
            p = Path(self.opts.stats).expanduser()
            if not p.is_file():
                raise DataError(f"statistics file {p} does not exist", where="data.stats",
                                fix="point data.stats at a mel_stats.json a run wrote, or set it to null")
            return MelStats.load(p)
        p = cache_dir() / f"stats-{key}.json"
        if p.is_file():
            return MelStats.load(p)
        stats = MelStats.compute(train_mels)
        try:
            stats.save(p)
        except OSError:  # a read-only home: the statistics are recomputed next time, nothing is lost
            pass
        return stats

    # -- the Dataset contract ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.mels)

    def __getitem__(self, i: int) -> State:
        item: State = {"mel": self.mels[i]}
        if self.num_classes is not None:
            item["cond"] = self.labels[i]
        return item

    def collate(self, items: Sequence[State], width: int | None = None) -> State:
        """Pad to the longest item (rounded up to ``frame_multiple``) or to ``width``; ``mask`` [B, 1, T]."""
        fm = self.opts.frame_multiple
        t = width or -(-max(int(it["mel"].shape[-1]) for it in items) // fm) * fm
        mel = torch.zeros(len(items), self.opts.mel.n_mels, t)
        mask = torch.zeros(len(items), 1, t, dtype=torch.bool)
        for i, it in enumerate(items):
            n = int(it["mel"].shape[-1])
            mel[i, :, :n] = it["mel"]
            mask[i, :, :n] = True
        out: State = {"mel": mel, "mask": mask}
        if "cond" in items[0]:
            out["cond"] = torch.stack([it["cond"] for it in items])
        return out

    def batches(self, epoch: int, batch_size: int, seed: int) -> list[list[int]]:
        """Length-bucketed batches (little padding), a pure function of ``(seed, epoch)``."""
        return bucketed_batches(self.lengths, epoch, batch_size, seed, stream=0x6D656C)

    def template(self, n: int, seed: int = 0) -> State:
        """``n`` training examples drawn with replacement (length and label of each sample follow the
        training data of its class), padded to ``max_frames``."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(self), (n,), generator=g).tolist()
        return self.collate([self[i] for i in idx], width=self.max_frames)

    def class_template(self, cond: Tensor, seed: int = 0) -> State:
        """Like :meth:`template`, with a training example of class ``cond[i]`` for sample i (its length)."""
        idx = examples_of_classes(self.labels, cond, seed).tolist()
        return self.collate([self[i] for i in idx], width=self.max_frames)

    def reference(self, n: int, seed: int = 0) -> State:
        """``n`` examples of the held-out split (the test split for a run on train), padded to ``max_frames``."""
        n = min(n, len(self.ref_mels))
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.ref_mels), generator=g)[:n].tolist()
        items = [{"mel": self.ref_mels[i], **({"cond": self.ref_labels[i]} if self.num_classes else {})}
                 for i in idx]
        return self.collate(items, width=self.max_frames)

    def split_state(self, which: str) -> State:
        """Every example of ``train`` (this dataset's rows) or ``reference`` (the held-out split), padded."""
        mels, labels = (self.mels, self.labels) if which == "train" else (self.ref_mels, self.ref_labels)
        items = [{"mel": m, **({"cond": labels[i]} if self.num_classes else {})} for i, m in enumerate(mels)]
        return self.collate(items, width=self.max_frames)


# ---------------------------------------------------------------------------------------------
_FSDD_NAME = re.compile(r"(?:^|/)(\d)_([A-Za-z]+)_(\d+)\.wav$")


def fsdd_clips(members: Iterable[tuple[str, bytes]]) -> list[Clip]:
    """Clips from ``(file name, bytes)`` pairs named ``{digit}_{speaker}_{index}.wav``; official split."""
    clips = []
    for name, data in members:
        m = _FSDD_NAME.search(name)
        if not m:
            continue
        wav, sr = read_audio(data, name)
        split = "test" if int(m.group(3)) <= 4 else "train"
        clips.append(Clip(wav, sr, int(m.group(1)), split, name))
    clips.sort(key=lambda c: (c.split, int(_FSDD_NAME.search(c.name).group(1)), c.name))
    return clips


def _unsafe_member(name: str) -> bool:
    """An archive member name that would leave the folder it is extracted into: absolute, or with ``..``."""
    return name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None \
        or ".." in re.split(r"[/\\]", name)


def _tar_members(path: Path) -> Iterable[tuple[str, bytes]]:
    """``(member name, bytes)`` of the FSDD recordings in the tarball ``path`` (read, never extracted).
    Members with absolute names or ``..`` are no recordings of a real release: skipped with a note."""
    skipped: list[str] = []
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                if not (m.isfile() and m.name.endswith(".wav") and "/recordings/" in f"/{m.name}"):
                    continue
                if _unsafe_member(m.name):
                    skipped.append(m.name)
                    continue
                yield m.name, tf.extractfile(m).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read the FSDD archive {path.name}: {exc}", where=str(path),
                        fix="delete the file and copy or download it again") from None
    if skipped:
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        note(f"skipped {len(skipped)} member(s) of the FSDD archive whose names leave its folder: "
             f"{skipped[0]!r}{more}", where=str(path),
             fix="a genuine release has none: check where the archive came from")


def download_fsdd(dest: Path) -> Path:
    """Fetch the FSDD repository tarball at a pinned commit (GitHub) into ``dest``; returns its path."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"fsdd-{FSDD_COMMIT[:12]}.tar.gz"
    if out.is_file():
        return out
    tmp = out.with_suffix(".part")
    try:
        with urllib.request.urlopen(FSDD_URL, timeout=60) as r, open(tmp, "wb") as f:  # noqa: S310 - fixed https URL
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot download FSDD from {FSDD_URL}: {exc}", where="data.download",
                        fix="check the network, or download the repository yourself and set data.root to "
                            "its folder (the one holding recordings/)") from None
    tmp.replace(out)
    return out


def build_fsdd(root: str | None = None, download: bool = False, split: str = "train", **common) -> MelDataset:
    """The Free Spoken Digit Dataset (10 digits, 6 speakers, 8 kHz)."""
    opts = FSDDOptions(root=root, download=download, split=split, **common)
    base = data_root("fsdd", root)
    members: Iterable[tuple[str, bytes]] | None = None
    where = str(base) if base else "$FMKIT_DATA_DIR/fsdd"
    if base is not None and (base / "recordings").is_dir():
        files = sorted((base / "recordings").glob("*.wav"))
        members = ((str(p), p.read_bytes()) for p in files)
    elif base is not None and (base / "fsdd_recordings.tar.gz").is_file():
        members = _tar_members(base / "fsdd_recordings.tar.gz")
    elif download:
        members = _tar_members(download_fsdd(cache_dir() / "downloads"))
        where = FSDD_URL
    if members is None:
        raise DataError("the Free Spoken Digit Dataset is not there", where=where,
                        fix="set FMKIT_DATA_DIR (a folder holding fsdd/recordings/ or fsdd/fsdd_recordings.tar.gz), "
                            "set data.root, or set data.download: true")
    clips = fsdd_clips(members)
    if not clips:
        raise DataError("no FSDD recordings ({digit}_{speaker}_{index}.wav) found", where=where,
                        fix="point data.root at the folder that holds recordings/")
    key = settings_key("fsdd", len(clips), _common_key(opts))
    return MelDataset(clips, opts, split=split, num_classes=10, class_names=[str(d) for d in range(10)], key=key,
                      name="fsdd")


def build_folder(root: str, labels: str | None = None, split: str = "train", **common) -> MelDataset:
    """Any folder of WAV/FLAC files, labelled by an optional CSV (``path,label[,split]``)."""
    opts = FolderOptions(root=root, labels=labels, split=split, **common)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"audio folder {base} does not exist", where="data.root", fix="point data.root at a folder")
    clips: list[Clip] = []
    names: list[str] = []
    if labels is not None:
        rows = _read_labels(base, Path(labels).expanduser())
        names = sorted({r[1] for r in rows}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
        index = {n: i for i, n in enumerate(names)}
        for rel, lab, sp in rows:
            wav, sr = read_audio(base / rel, str(base / rel))
            clips.append(Clip(wav, sr, index[lab], sp, rel))
    else:
        for p in sorted(q for q in base.rglob("*") if q.suffix.lower() in AUDIO_SUFFIXES):
            wav, sr = read_audio(p, str(p))
            clips.append(Clip(wav, sr, -1, "train", str(p.relative_to(base))))
    if not clips:
        raise DataError(f"no .wav or .flac files in {base}", where="data.root", fix="point data.root at audio files")
    key = settings_key("folder", str(base.resolve()), [(c.name, c.label, c.split, c.wav.numel()) for c in clips],
                       _common_key(opts))
    return MelDataset(clips, opts, split=split, num_classes=len(names) if labels is not None else None,
                      class_names=names, key=key, name=f"folder:{base.name}")


def _read_labels(base: Path, path: Path) -> list[tuple[str, str, str]]:
    p = path if path.is_absolute() or path.is_file() else base / path
    if not p.is_file():
        raise DataError(f"labels file {p} does not exist", where="data.labels", fix="give a CSV path,label[,split]")
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"labels CSV needs a header with columns path,label (got {reader.fieldnames})",
                            where=str(p), fix="write a first line `path,label` (and optionally `,split`)")
        rows = []
        for i, r in enumerate(reader, start=2):
            sp = (r.get("split") or "train").strip()
            if sp not in ("train", "test"):
                raise DataError(f"split {sp!r} on line {i} is neither train nor test", where=str(p),
                                fix="use train or test in the split column")
            if not (base / r["path"]).is_file():
                raise DataError(f"line {i}: file {r['path']!r} does not exist under {base}", where=str(p),
                                fix="paths in the labels CSV are relative to data.root")
            rows.append((r["path"], r["label"].strip(), sp))
    return rows


def build_speechcommands(root: str | None = None, download: bool = False, digits_only: bool = True,
                         split: str = "train", **common) -> MelDataset:
    """Speech Commands through torchaudio's class (files decoded by soundfile); SC09 with ``digits_only``."""
    from torchaudio.datasets import SPEECHCOMMANDS

    opts = SpeechCommandsOptions(root=root, download=download, digits_only=digits_only, split=split, **common)
    base = data_root("speechcommands", root)
    if base is None:
        raise DataError("no folder for Speech Commands", where="data.root",
                        fix="set data.root (and data.download: true to fetch it) or FMKIT_DATA_DIR")
    clips: list[Clip] = []
    labels: list[str] = []
    for sp, subset in (("train", "training"), ("test", "testing")):
        try:
            ds = SPEECHCOMMANDS(str(base), download=download, subset=subset)
        except (RuntimeError, OSError, FileNotFoundError) as exc:
            raise DataError(f"Speech Commands is not there: {exc}", where=str(base),
                            fix="set data.download: true, or point data.root at torchaudio's SpeechCommands root"
                            ) from None
        for n in range(len(ds)):
            rel, sr, label, *_ = ds.get_metadata(n)
            if digits_only and label not in DIGITS:
                continue
            if opts.limit is not None and sum(c.split == sp for c in clips) >= opts.limit:
                break
            wav, sr2 = read_audio(Path(ds._archive) / rel, rel)
            clips.append(Clip(wav, sr2, -1, sp, rel))
            labels.append(label)
    names = list(DIGITS) if digits_only else sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    for c, lab in zip(clips, labels):
        c.label = index[lab]
    key = settings_key("speechcommands", str(base.resolve()), digits_only, len(clips), _common_key(opts))
    return MelDataset(clips, opts, split=split, num_classes=len(names), class_names=names, key=key,
                      name="sc09" if digits_only else "speechcommands")


def _common_key(opts: CommonOptions) -> dict:
    return opts.model_dump(include=set(CommonOptions.model_fields) - {"stats"})
