import numpy as np
import pytest
import torch

from gptlab.data.loader import BatchLoader, Dataset
from gptlab.data.prepare import prepare
from gptlab.errors import GptlabError


def test_windows_are_consecutive_and_targets_shifted(char_dataset):
    ds = Dataset(char_dataset)
    data = np.fromfile(char_dataset / "train.bin", dtype=np.uint16)
    loader = BatchLoader(ds, "train", batch_size=8, block_size=16, seed=0)
    batch = loader.next_batch()
    x, y = batch.inputs, batch.targets
    assert batch.loss_mask is None and x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        # The window really is a slice of the token file.
        starts = np.flatnonzero(data[:-16] == row_x[0])
        assert any(
            np.array_equal(data[s : s + 16], row_x) and np.array_equal(data[s + 1 : s + 17], row_y) for s in starts
        )


def test_state_dict_continues_the_same_sequence(char_dataset):
    ds = Dataset(char_dataset)
    a = BatchLoader(ds, "train", 4, 16, seed=7)
    a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch().inputs for _ in range(3)]
    b = BatchLoader(ds, "train", 4, 16, seed=999)
    b.load_state_dict(state)
    assert all(torch.equal(e, b.next_batch().inputs) for e in expected)


def test_split_too_short_for_a_window_is_refused(tmp_path):
    (tmp_path / "tiny.txt").write_text("hello world, this is short\n")
    prepare([str(tmp_path / "tiny.txt")], tmp_path / "d")
    with pytest.raises(GptlabError, match="fewer than block_size"):
        BatchLoader(Dataset(tmp_path / "d"), "val", 2, 64, seed=0)


def test_not_a_dataset_is_refused(tmp_path):
    with pytest.raises(GptlabError, match="not a prepared dataset"):
        Dataset(tmp_path)


def test_rows_are_right_padded_with_their_real_positions_marked():
    from gptlab.data.batch import pad_rows

    ids, real = pad_rows([[5, 6, 7], [8], []])
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]] and ids.dtype == torch.long
    assert real.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    flags, _ = pad_rows([[True, False], [True]], fill=False, dtype=torch.bool)
    assert flags.tolist() == [[True, False], [True, False]]  # padding is never a trained position
    assert pad_rows([])[0].shape == (0, 0)
