"""Search with a trained supernet: inherited accuracy on the recorded held-out images, and the
FocusFormer-style sampler's specialisation."""

from __future__ import annotations

import json

import pytest
import torch

from deployvit.arch import load_arch
from deployvit.counting import count_flops
from tests.conftest import assert_one_line_error, run_cli

TRAIN = ["--space", "test", "--data", "digits", "--batch-size", "64", "--aug", "light", "--warmup-epochs", "0",
         "--log-every", "0", "--held-out-per-class", "10", "--epochs", "1", "--sampler", "focus"]
SEARCH = ["--space", "test", "--population", "6", "--generations", "2", "--parents", "3", "--mutations", "3",
          "--crossovers", "3", "--no-progress", "--data", "digits"]


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("focus")
    torch.set_num_threads(1)
    result = run_cli("train-supernet", *TRAIN, "--out", str(out))
    assert result.code == 0, result.err
    return out / "last.pt"


def test_supernet_score_is_held_out_accuracy(checkpoint, tmp_path):
    out = tmp_path / "s"
    result = run_cli("search", *SEARCH, "--score", "supernet", "--supernet", str(checkpoint), "--flops", "3M", "--out", str(out))
    assert result.code == 0, result.err
    final = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert final["held_out_images"] == 100  # 10 per class, the ids the checkpoint recorded
    winner = next(iter(final["winners"].values()))
    assert 0 <= winner["score"] <= 100
    assert count_flops(load_arch(out / "best.arch.json")) <= 3e6


def test_sampler_specialisation_respects_the_budget(checkpoint, tmp_path):
    out = tmp_path / "f"
    result = run_cli("search", *SEARCH, "--score", "sampler", "--supernet", str(checkpoint), "--flops", "2M",
                     "--sampler-k", "16", "--out", str(out))
    assert result.code == 0, result.err
    assert count_flops(load_arch(out / "best.arch.json")) <= 2e6
    final = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert final["request"]["score"] == "sampler"
    state = json.loads((out / "search_state.json").read_text())
    assert len(state["evaluated"]) == 16  # --sampler-k distinct archs within the budget were scored, not 16 draws


def test_focus_records_its_method_and_score_and_refuses_another_on_resume(checkpoint, tmp_path):
    """`--score sampler` is the former spelling of `--method focus --score supernet`; its state says
    so, and can no longer be continued by evolution under `--score supernet` (or by another score)."""
    out, focus = tmp_path / "f", ["--supernet", str(checkpoint), "--flops", "2M", "--sampler-k", "8"]
    result = run_cli("search", *SEARCH, "--score", "sampler", *focus, "--out", str(out))
    assert result.code == 0, result.err
    assert "note: --score sampler is the former spelling of --method focus --score supernet" in result.out
    state = json.loads((out / "search_state.json").read_text())
    assert (state["method"], state["score"], len(state["evaluated"])) == ("focus", "supernet", 8)
    assert_one_line_error(run_cli("search", *SEARCH, "--score", "supernet", *focus, "--out", str(out), "--resume"),
                          "started with --method focus --score supernet, not --method evolution --score supernet")
    no_data = [a for a in SEARCH if a not in ("--data", "digits")]  # the DSS score reads no --data (commands.conflicts)
    assert_one_line_error(run_cli("search", *no_data, "--method", "focus", "--score", "dss", *focus, "--out", str(out), "--resume"),
                          "not --method focus --score dss")
    assert_one_line_error(run_cli("search", *SEARCH, "--method", "focus", "--score", "dss", *focus, "--out", str(out), "--resume"),
                          "--data needs --score supernet")
    best = (out / "best.arch.json").read_text()
    result = run_cli("search", *SEARCH, "--method", "focus", *focus, "--out", str(out), "--resume")  # the new spelling
    assert result.code == 0, result.err
    assert (out / "best.arch.json").read_text() == best and len(json.loads((out / "search_state.json").read_text())["evaluated"]) == 8
    dss = tmp_path / "d"  # the sampler's proposals ranked by another score
    result = run_cli("search", *no_data, "--method", "focus", "--score", "dss", *focus, "--out", str(dss))
    assert result.code == 0, result.err
    state = json.loads((dss / "search_state.json").read_text())
    assert (state["method"], state["score"]) == ("focus", "dss") and count_flops(load_arch(dss / "best.arch.json")) <= 2e6


def test_checkpoint_for_another_space_or_missing_data_is_refused(checkpoint, tmp_path):
    out = tmp_path / "never"
    assert_one_line_error(
        run_cli("search", "--space", "test-resnas", "--score", "supernet", "--supernet", str(checkpoint), "--data", "digits", "--out", str(out)),
        "trained on space 'test'",
    )
    assert_one_line_error(
        run_cli("search", "--space", "test", "--score", "supernet", "--supernet", str(checkpoint), "--data", str(tmp_path / "nodata"), "--out", str(out)),
        "data not found",
    )
    assert not out.exists()
    # without --data, the data the checkpoint records (said in one line), not a refusal
    used = run_cli("search", "--space", "test", "--score", "supernet", "--supernet", str(checkpoint), "--population", "4",
                   "--generations", "1", "--parents", "2", "--mutations", "2", "--crossovers", "2", "--no-progress", "--out", str(out))
    assert used.code == 0, used.err
    assert f"data: digits, recorded in {checkpoint}" in used.out + used.err


# --- the score itself: device, streaming, cache budget, throughput ---------------------------------


class CountingImages(torch.utils.data.Dataset):
    """Seeded images that count how many of them are alive (materialised, not yet freed) at once."""

    def __init__(self, n: int, size: int = 32, classes: int = 10):
        self.n, self.size, self.classes = n, size, classes
        self.alive = self.max_alive = self.loaded = 0

    def __len__(self) -> int:
        return self.n

    def _freed(self) -> None:
        self.alive -= 1

    def __getitem__(self, i: int):
        import weakref

        image = torch.randn(3, self.size, self.size, generator=torch.Generator().manual_seed(i))
        self.loaded += 1
        self.alive += 1
        self.max_alive = max(self.max_alive, self.alive)
        weakref.finalize(image, self._freed)
        return image, i % self.classes


def _supernet():
    from deployvit.spaces import get_space
    from deployvit.supernet import Supernet

    torch.manual_seed(0)
    return Supernet(get_space("test")).eval()


def _preloaded_accuracy(supernet, data, arch) -> float:
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data[i][1] for i in range(len(data))])
    supernet.set_arch(arch)
    with torch.no_grad():
        return 100.0 * float((supernet(images).argmax(-1) == labels).sum()) / len(labels)


def test_supernet_score_streams_the_held_out_set_in_batches():
    """With no cache, at most one batch of images is in memory at a time, on every pass, and the
    accuracy is the one computed on the whole set at once."""
    import numpy as np

    from deployvit.search.supernet_score import SupernetAccuracy
    from deployvit.spaces import get_space

    data = CountingImages(200)
    score = SupernetAccuracy(_supernet(), data, batch_size=32, cache_bytes=0)
    archs = [get_space("test").sample(np.random.default_rng(s)) for s in range(2)]
    got = [score(a) for a in archs]
    assert data.max_alive <= 32 and data.loaded == 400  # streamed twice, never all 200 at once
    assert score.cached_images == 0
    reference = CountingImages(200)
    for arch, value in zip(archs, got):
        assert value == pytest.approx(_preloaded_accuracy(score.supernet, reference, arch))
    stats = score.throughput()
    assert stats["archs_scored"] == 2 and stats["archs_per_s"] > 0 and stats["device"] == "cpu"
    assert stats["precision"] == "fp32" and stats["held_out_images"] == 200


def test_supernet_score_caches_a_prefix_within_its_budget():
    import numpy as np

    from deployvit.search.supernet_score import SupernetAccuracy
    from deployvit.spaces import get_space

    data = CountingImages(200)
    batch_bytes = 32 * 3 * 32 * 32 * 4 + 32 * 8  # float32 images + int64 labels
    score = SupernetAccuracy(_supernet(), data, batch_size=32, cache_bytes=3 * batch_bytes + 100)
    arch = get_space("test").sample(np.random.default_rng(0))
    first = score(arch)
    assert score.cached_images == 96 and data.loaded == 200
    second = score(arch)
    assert data.loaded == 200 + (200 - 96)  # the cached prefix is not decoded again
    assert first == second


def test_supernet_score_device_errors_are_one_line():
    from deployvit.compute import compute_device
    from deployvit.errors import DeployvitError
    from deployvit.search.supernet_score import SupernetAccuracy

    with pytest.raises(DeployvitError, match="mixed-precision scoring needs a CUDA device"):
        SupernetAccuracy(_supernet(), CountingImages(4), amp=True)
    if torch.cuda.is_available():
        return
    with pytest.raises(DeployvitError, match="no CUDA GPU") as err:  # what `search --device cuda` hits first
        compute_device("cuda")
    assert "\n" not in str(err.value)
    with pytest.raises(DeployvitError, match="no CUDA GPU") as err:
        SupernetAccuracy(_supernet(), CountingImages(4), device=torch.device("cuda"))
    assert "\n" not in str(err.value)


@pytest.mark.gpu
def test_supernet_score_on_gpu_agrees_with_cpu():
    """fp32 on the GPU (TF32 off) gives the CPU's accuracy; AMP runs in bf16/fp16 with the cache on the GPU."""
    import numpy as np

    from deployvit.compute import compute_device
    from deployvit.search.supernet_score import SupernetAccuracy
    from deployvit.spaces import get_space

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    archs = [get_space("test").sample(np.random.default_rng(s)) for s in range(4)]
    cuda = compute_device("cuda")
    cpu = SupernetAccuracy(_supernet(), CountingImages(512), batch_size=128)
    fp32 = SupernetAccuracy(_supernet(), CountingImages(512), batch_size=128, device=cuda, amp=False, workers=0)
    amp = SupernetAccuracy(_supernet(), CountingImages(512), batch_size=128, device=cuda, workers=0)
    assert fp32.precision is None and amp.precision in ("bf16", "fp16")
    assert next(amp.supernet.parameters()).is_cuda
    for arch in archs:
        assert abs(cpu(arch) - fp32(arch)) <= 0.5  # at most a couple of exact near-ties differ
        assert 0.0 <= amp(arch) <= 100.0
    assert amp.cached_images == 512 and amp._cache[0][0].is_cuda
    assert amp._cache[0][0].dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp.precision]
    assert amp.throughput()["archs_per_s"] > 0 and amp.throughput()["device"].startswith("cuda")
