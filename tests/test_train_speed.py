"""The pieces behind speed: rank/micro-step -> window assignment with prefetching, peaks and MFU."""

import pytest
import torch

from gptlab.config import ModelConfig
from gptlab.data.loader import BatchLoader, Dataset
from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.model.accounting import flops_per_token
from gptlab.precision import precision_for
from gptlab.train.perf import gpu_datasheet_peak, mfu
from gptlab.train.prefetch import PrefetchingLoader


def loader(dataset, seed=7):
    return BatchLoader(dataset, "train", 3, 8, seed=seed)


def test_ranks_split_the_one_process_stream_and_resume_exactly(char_dataset):
    ds = Dataset(char_dataset)
    plain = loader(ds)
    stream = [plain.next_batch().inputs for _ in range(8)]
    ranks = [PrefetchingLoader(loader(ds), rank=r, world_size=2) for r in range(2)]
    try:
        for micro in range(4):  # micro-step m: rank r takes batch 2m + r of the one-process stream
            for r, prefetching in enumerate(ranks):
                assert torch.equal(prefetching.next_batch().inputs, stream[2 * micro + r])
        # The thread has drawn ahead, yet the saved state continues right after what was consumed.
        state = ranks[0].state_dict()
    finally:
        for prefetching in ranks:
            prefetching.close()
    resumed = PrefetchingLoader(loader(ds, seed=99), rank=0, world_size=1)
    resumed.load_state_dict(state)
    try:
        assert torch.equal(resumed.next_batch().inputs, plain.next_batch().inputs)
    finally:
        resumed.close()


def test_loader_errors_reach_the_training_thread(char_dataset):
    class Broken(BatchLoader):
        def next_batch(self):
            raise GptlabError("token file vanished")

    prefetching = PrefetchingLoader(Broken(Dataset(char_dataset), "train", 2, 8, seed=0))
    with pytest.raises(GptlabError, match="vanished"):
        prefetching.next_batch()
    prefetching.close()


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA A10G", 70e12),
        ("Some Future GPU", None),
    ],
)
def test_datasheet_peaks_match_the_right_gpu(name, peak):
    assert gpu_datasheet_peak(name) == peak


def test_mfu_is_model_flops_over_peak():
    cfg = ModelConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    per_token = flops_per_token(cfg)["train"]
    # Hand count: 4 layers x 12 x 128^2 + 65 x 128 matmul weights, 6 FLOPs each, plus attention
    # 3 x 2 x 2 x 4 x 64 x 128 for training.
    assert per_token == 6 * (4 * 12 * 128 * 128 + 65 * 128) + 3 * 2 * 2 * 4 * 64 * 128
    assert mfu(1000.0, per_token, per_token * 2000.0) == pytest.approx(0.5)


def test_a_peak_measured_on_a_busy_machine_is_corrected_and_mfu_stays_at_most_one():
    from gptlab.train.perf import Peak, measure_cpu_matmul_peak

    fooled = Peak(1e6, "float32 matmul, measured", measured=True, retimings=1)  # read while busy
    fooled.refine(achieved_flops=0.0)
    assert fooled.flops > 1e6 and fooled.retimings == 0  # re-timed: the real peak is far above
    reached = 10 * measure_cpu_matmul_peak(seconds=0.05)  # as if the model ran faster than the timing
    fooled.refine(reached)
    assert fooled.flops >= reached and mfu(reached / 100, 100, fooled.flops) <= 1.0
    sheet = Peak(1e12, "datasheet")
    sheet.refine(5e12)
    assert sheet.flops == 1e12 and mfu(5e12, 1, sheet.flops) == 1.0  # never printed above 100%


def test_cpu_trains_in_float32_and_unknown_devices_are_refused(monkeypatch):
    assert precision_for(torch.device("cpu")).name == "fp32"
    with pytest.raises(GptlabError, match="unknown device 'tpu'"):
        pick_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GptlabError, match="CUDA is not available"):
        pick_device("cuda")
    assert pick_device("auto").type in ("cpu", "mps")
