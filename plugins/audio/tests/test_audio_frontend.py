"""The log-mel front end: mel -> Griffin-Lim -> mel round trip (with a figure), statistics, options."""

from __future__ import annotations

import json

import pytest
import torch
from audio_testlib import real_fsdd, synth_digit

from fmkit.plugin import DataError

from fmkit_audio.mel import FrontEndOptions, MelFrontEnd, MelStats
from fmkit_audio.vocoders import GriffinLim

FE = FrontEndOptions(sample_rate=8000, n_fft=512, hop_length=128, n_mels=64, f_max=4000.0)
# Tolerances of the round trip at 64 Griffin-Lim iterations. Spectral convergence ||A - A'||_F / ||A||_F
# of the mel magnitudes; mean |log-mel difference| on the bins within 6 nats (52 dB) of the peak.
# Measured (2-core CPU): 0.07 / 0.10 on a generated digit, 0.12 / 0.10 on FSDD's 3_jackson_0; one
# iteration (phase from the init only) gives 0.27-0.45 / 0.29-0.48, so these bounds need the algorithm.
SC_TOL, MAE_TOL = 0.2, 0.35


def clips() -> list[tuple[str, torch.Tensor]]:
    out = [("generated digit 3", torch.from_numpy(synth_digit(3, 0, 0))),
           ("generated digit 7", torch.from_numpy(synth_digit(7, 1, 3)))]
    root = real_fsdd()
    if root is not None:
        import tarfile

        from fmkit_audio.data import read_audio
        if (root / "recordings").is_dir():
            p = sorted((root / "recordings").glob("3_*_0.wav"))[0]
            out.append((p.name, read_audio(p, p.name)[0]))
        else:
            with tarfile.open(root / "fsdd_recordings.tar.gz") as tf:
                m = next(m for m in tf if m.name.endswith("_0.wav") and m.name.split("/")[-1].startswith("3_"))
                out.append((m.name, read_audio(tf.extractfile(m).read(), m.name)[0]))
    return out


def round_trip_errors(mel: torch.Tensor, mel2: torch.Tensor) -> tuple[float, float]:
    n = min(mel.shape[-1], mel2.shape[-1])
    a, b = mel[:, :n], mel2[:, :n]
    sc = float((a.exp() - b.exp()).norm() / a.exp().norm())
    loud = a > a.max() - 6.0
    return sc, float((a - b).abs()[loud].mean())


def test_mel_griffin_lim_mel_round_trip_is_close(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = MelFrontEnd(FE)
    gl64, gl1 = GriffinLim(n_iter=64, front_end=FE), GriffinLim(n_iter=1, front_end=FE)
    results = []
    fig, axes = plt.subplots(3, len(clips()), figsize=(4 * len(clips()), 7), squeeze=False)
    for j, (name, wav) in enumerate(clips()):
        mel = front(wav)
        back = gl64(mel[None])[0]
        assert back.shape == ((mel.shape[-1] - 1) * FE.hop_length,)
        assert back.abs().max() <= 1.0
        mel2 = front(back)
        assert mel2.shape[-1] == mel.shape[-1]  # (T - 1) * hop samples are T centred frames again
        sc, mae = round_trip_errors(mel, mel2)
        sc1, mae1 = round_trip_errors(mel, front(gl1(mel[None])[0]))
        results.append((name, sc, mae, sc1, mae1))
        for i, (img, title) in enumerate([(mel, f"{name}: log-mel"), (mel2, f"after Griffin-Lim (sc {sc:.3f})"),
                                          (mel2 - mel, f"difference (mean |d| loud {mae:.3f} nats)")]):
            axes[i, j].imshow(img.numpy(), origin="lower", aspect="auto", cmap="magma" if i < 2 else "coolwarm")
            axes[i, j].set_title(title, fontsize=8)
    fig.tight_layout()
    png = tmp_path / "round_trip.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    (tmp_path / "round_trip.json").write_text(json.dumps(results, indent=1))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    for name, sc, mae, sc1, mae1 in results:
        assert sc < SC_TOL and mae < MAE_TOL, (name, sc, mae)
        assert sc1 > SC_TOL, (name, sc1)  # the bound is not met without the iterations


def test_round_trip_check_tells_different_sounds_apart():
    """The same measure between two different digits is far above the tolerance (the test can fail)."""
    front = MelFrontEnd(FE)
    a, b = front(torch.from_numpy(synth_digit(3, 0, 0))), front(torch.from_numpy(synth_digit(8, 1, 2)))
    sc, mae = round_trip_errors(a, b)
    assert sc > 2 * SC_TOL and mae > 2 * MAE_TOL


def test_mel_shapes_and_log_clamp():
    front = MelFrontEnd(FE)
    wav = torch.zeros(2, 1000)
    mel = front(wav)
    assert mel.shape == (2, 64, 1000 // 128 + 1)
    torch.testing.assert_close(mel, torch.full_like(mel, float(torch.log(torch.tensor(1e-5)))))
    assert front.seconds(8) == pytest.approx(8 * 128 / 8000)


def test_stats_are_global_mean_std_over_real_frames(tmp_path):
    g = torch.Generator().manual_seed(0)
    mels = [torch.randn(4, n, generator=g) * 2 + 3 for n in (5, 9, 13)]
    st = MelStats.compute(mels)
    flat = torch.cat([m.flatten() for m in mels]).double()
    assert st.mean == pytest.approx(float(flat.mean()), abs=1e-9)
    assert st.std == pytest.approx(float(flat.std(unbiased=False)), rel=1e-9)
    assert st.frames == 27
    assert MelStats.load(st.save(tmp_path / "s" / "mel_stats.json")) == st
    torch.testing.assert_close(st.denormalise(st.normalise(mels[0])), mels[0])


def test_front_end_options_refuse_impossible_bands():
    with pytest.raises(ValueError, match="f_max"):
        FrontEndOptions(sample_rate=8000, f_max=5000.0)
    with pytest.raises(ValueError, match="win_length"):
        FrontEndOptions(n_fft=256, win_length=512)


def test_stats_file_missing_is_a_data_error(synth_fsdd, tmp_path):
    from fmkit_audio.data import build_fsdd

    with pytest.raises(DataError) as e:
        build_fsdd(root=str(synth_fsdd), limit=20, stats=str(tmp_path / "nope.json"))
    assert "data.stats" in (e.value.where or "")
