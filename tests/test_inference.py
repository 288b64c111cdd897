"""Batched inference: the same numbers as one call, every module back in its own mode."""

import pytest
import torch

from cdrlib.inference import evaluating, in_batches


def test_in_batches_equals_one_call_for_tensors_and_tuples():
    x = torch.randn(23, 5, generator=torch.Generator().manual_seed(0))
    w = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    whole = x @ w
    for batch_size in (1, 4, 23, 100):
        torch.testing.assert_close(in_batches(lambda sl: x[sl] @ w, len(x), batch_size), whole)
        a, b = in_batches(lambda sl: (x[sl] @ w, x[sl].sum(1)), len(x), batch_size)
        torch.testing.assert_close(a, whole)
        torch.testing.assert_close(b, x.sum(1))
    seen = []
    in_batches(lambda sl: seen.append((sl.start, sl.stop)) or x[sl], len(x), 10)
    assert seen == [(0, 10), (10, 20), (20, 23)]
    with pytest.raises(ValueError, match="n = 0"):
        in_batches(lambda sl: x[sl], 0, 4)
    with pytest.raises(ValueError, match="batch_size"):
        in_batches(lambda sl: x[sl], len(x), 0)


def test_evaluating_restores_each_mode_also_after_an_error():
    training, frozen = torch.nn.Dropout(0.5), torch.nn.Dropout(0.5).eval()
    with evaluating(training, frozen, len):    # a plain callable passes through
        assert not training.training and not frozen.training
        assert not torch.is_grad_enabled()
    assert training.training and not frozen.training and torch.is_grad_enabled()
    with pytest.raises(RuntimeError, match="boom"):
        with evaluating(training):
            raise RuntimeError("boom")
    assert training.training


def test_feature_passes_leave_the_callers_model_training():
    from cdrlib.evaluation import extract_features
    from cdrlib.ucdir_train import cache_view_features

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.2), torch.nn.Linear(3 * 8 * 8, 4))
    images = torch.rand(6, 3, 8, 8)
    first = extract_features(model, images, batch_size=4)
    assert model.training
    torch.testing.assert_close(extract_features(model, images, batch_size=6), first)  # dropout off
    views = cache_view_features(model, images, n_views=3, image_size=8, batch_size=4)
    assert views.shape == (6, 3, 4) and model.training
    torch.testing.assert_close(views[:, 0], first)    # view 0 is the plain image
