"""Row-invariant products: during decode steps each row's result must not depend on the batch."""

import pytest
import torch

from gptlab.inference.products import (
    PROBE_ROWS,
    RowProduct,
    invariant_rows,
    mkl_packed,
    row_invariant_products,
    transposed,
)
from gptlab.model.layers import Linear


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


SHAPES = [(32, 96), (128, 65), (768, 2304)]  # (in, out): attention-like, a small vocabulary's head, gpt2's qkv


@pytest.mark.parametrize("kind", [mkl_packed, transposed], ids=["mkl-packed", "transposed"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_probe_picks_a_row_count_from_which_products_agree(shape, kind, threads):
    weight, bias = torch.randn(shape[1], shape[0]), torch.randn(shape[1])
    product = kind(weight, bias)
    if product is None:
        pytest.skip("this torch has no MKL packed product")
    m = invariant_rows(product, weight, ("test", kind.__name__, shape))
    assert 1 <= m <= PROBE_ROWS
    x = torch.randn(PROBE_ROWS, shape[0])
    full = product(x)
    torch.testing.assert_close(full, x @ weight.t() + bias)  # the layer's product, up to float rounding
    for M in range(m, PROBE_ROWS + 1):
        pick = torch.randperm(PROBE_ROWS)[:M]
        assert torch.equal(product(x[pick]), full[pick]), M


@pytest.mark.parametrize("packed", [True, False], ids=["mkl-packed", "transposed"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_each_row_gets_the_same_bits_alone_and_in_any_batch(shape, packed, threads):
    torch.manual_seed(0)
    linear = Linear(*shape)
    product = RowProduct(linear, packed)
    x = torch.randn(3 * PROBE_ROWS, shape[0])
    alone = torch.cat([product(x[i : i + 1]) for i in range(len(x))])
    for M in (2, 3, PROBE_ROWS - 1, PROBE_ROWS, PROBE_ROWS + 1, 2 * PROBE_ROWS + 5, 3 * PROBE_ROWS):
        pick = torch.randperm(len(x))[:M]  # beyond PROBE_ROWS rows, the product goes in chunks
        assert torch.equal(product(x[pick]), alone[pick]), M
    torch.testing.assert_close(alone, linear(x))  # the layer's own product, up to float rounding


def test_products_apply_inside_the_block_only():
    torch.manual_seed(0)
    model = torch.nn.Sequential(Linear(8, 8), torch.nn.ReLU(), Linear(8, 3))
    x = torch.randn(5, 8)
    plain = model(x)
    products = row_invariant_products(model)
    assert products is not None
    with products:
        assert all(m.product is not None for m in model if isinstance(m, Linear))
        torch.testing.assert_close(model(x), plain)
    assert all(m.product is None for m in model if isinstance(m, Linear))
    assert torch.equal(model(x), plain)  # nn.Linear's numbers again, as training computes them


def test_the_copies_follow_the_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(Linear(8, 8))
    x = torch.randn(3, 8)
    first = row_invariant_products(model)
    assert first is not None and row_invariant_products(model) is first  # weights unchanged: the copies are reused
    with torch.no_grad():
        model[0].weight.mul_(2)  # an optimizer step between two generations
    again = row_invariant_products(model)
    assert again is not None and again is not first
    with again:
        torch.testing.assert_close(model(x), x @ model[0].weight.t() + model[0].bias)
