"""How far Griffin-Lim overshoots full scale on real clips at the data's own level (the audio plugin's
note threshold, levels.NOTE_SHARE, sits well above it):

    FMKIT_DATA_DIR=/work/shared/data python bench/audio_levels.py [RECIPE]

Each of the recipe's test clips (log-mel, un-normalised) goes through griffin_lim (64 iterations); prints
the peaks and the samples beyond full scale, which the WAV writer counts and no longer clamps.
"""

from __future__ import annotations

import statistics
import sys

from fmkit.plugin import get_registry, load_recipe

from fmkit_audio.mel import FrontEndOptions
from fmkit_audio.vocoders import build_vocoder
from fmkit_audio.writers import denormalised


def main(recipe: str = "audio_digits_cpu") -> None:
    rec = load_recipe(recipe)
    ds = get_registry().build("datasets", rec.data.spec(), where="data")
    voc = build_vocoder("griffin_lim", FrontEndOptions(**ds.info.meta["front_end"]))
    over = total = files = 0
    peaks = []
    for mel in denormalised(ds.split_state("reference"), ds):
        wav = voc(mel[None])[0]
        peaks.append(float(wav.abs().max()))
        n = int((wav.abs() > 1).sum())
        over, total, files = over + n, total + wav.numel(), files + (n > 0)
    print(f"peak_level {ds.info.meta['peak_level']:.3f}; {len(peaks)} test clips through griffin_lim: peak median "
          f"{statistics.median(peaks):.3f} max {max(peaks):.3f}; {files} clips with samples beyond full scale, "
          f"{over} of {total} samples ({over / total:.2e})")


if __name__ == "__main__":
    main(*sys.argv[1:])
