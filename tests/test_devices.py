"""Every tensor the analyses make lives on the model's device, shown without a GPU: the model and batches go to
the `meta` device, and a torch-function mode fails any op whose tensor arguments sit on different devices (torch
itself lets some ops mix meta with CPU). Values read out to Python from meta tensors (`if mask.any()`, `.item()`)
are stand-ins: this test checks devices, the others check values."""
import pytest
import torch
import torch.fx.experimental._config
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree

import coopinterp as ci
from coopinterp.analysis import ablation as A
from coopinterp.analysis import engine as E
from coopinterp.analysis import attention, behavior, paper_checks
from coopinterp.analysis import clamping as C
from coopinterp.analysis import patching as P

READ_OUT = {torch.Tensor.__bool__: True, torch.Tensor.item: 0.5, torch.Tensor.__float__: 0.5, torch.Tensor.__int__: 0}


class SameDevice(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in _pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func in READ_OUT and tensors and tensors[0].is_meta:
            return READ_OUT[func]
        if func is torch.Tensor.tolist and tensors[0].is_meta:
            return torch.full(tensors[0].shape, 0.5).tolist()
        devices = {t.device for t in tensors if t.dim() > 0}
        assert len(devices) <= 1, f"{getattr(func, '__name__', func)} mixes devices {devices}"
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def meta(tiny_run):
    trained = tiny_run.model(tiny_run.steps[-1])  # shared by other tests: copied, not moved
    model = ci.CoopModel(trained.task, trained.cfg).eval().requires_grad_(False)
    model.load_weights(trained.weights())
    model.to("meta")
    batches = {ev: ci.make_batch(model.task, ev, n=16, seed=i).to("meta") for i, ev in enumerate(ci.EVALUATORS)}
    return model, batches


def test_the_guard_catches_a_mix():
    with SameDevice(), pytest.raises(AssertionError, match="mixes devices"):
        torch.zeros(2, 3) @ torch.zeros(3, 4, device="meta")  # torch alone returns a CPU tensor here


@pytest.mark.parametrize("name, call", [
    ("engine", lambda m, b: E.Engine(m).score(E.Engine(m).forward(m.residual(b["train"]))[0], b["train"])["acc"]),
    ("ablate", lambda m, b: [A.ablated_hidden(m, b["flip"], [[(0, 1)], [(1, 2), (0, 0)]], mode) for mode in E.MODES]),
    ("patch", lambda m, b: [P.patched_hidden(m, b["flip"], [[0], [1, 2]], [[0], [1]], ["q", "kv"], mode, direct=True,
                                             direct_path="cut") for mode in ("zero", "mean", "resample", b["icl"])]),
    ("clamp", lambda m, b: C.clamp_sweep(m, b["ciwl"], (1, 1), ablate=[(0, 2)], mode="resample")),
    ("copier", lambda m, b: C.copier_sweep(m, b["ciwl"], (1, 1))),
    # composition is TL's own all_composition_scores on the weights, which TL refuses on meta; it makes no tensor
    ("rows", lambda m, b: [mod.rows(m, b) for mod in (A, P, C, paper_checks, attention, behavior)]),
])
def test_analyses_stay_on_the_model_device(meta, name, call):
    model, batches = meta
    # the iwl argmax picks the rows its anchor or screen cannot decide by a boolean index, which meta only stands in for
    with torch.no_grad(), SameDevice(), torch.fx.experimental._config.patch(meta_nonzero_assume_all_nonzero=True):
        out = call(model, batches)
    leaves = [t for t in _pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    assert all(t.is_meta for t in leaves)


@pytest.mark.parametrize("target", ["exemplar", "label"])
def test_a_training_step_and_forgetting_stay_on_the_model_device(tiny_config, target):
    """The fast forward, backward, an Adam step and a forgetting reset (drawn on the parameters' device) on meta."""
    from coopinterp.tasks.exemplar import SingleSeed

    cfg = tiny_config.replace(train={"forgetting": "active", "forget_every": 1, "forget_target": target})
    learner = SingleSeed(cfg, "cpu")
    learner.model.to("meta")
    learner.opt = torch.optim.Adam([p for p in learner.model.parameters() if p.requires_grad], lr=1e-3)
    batch = ci.make_batch(cfg.task, "train", 8, seed=0).to("meta")
    with SameDevice():
        loss = torch.nn.functional.cross_entropy(learner.model.fast_logits(batch.exemplars, batch.labels),
                                                 batch.target)
        loss.backward()
        learner.opt.step()
        learner.forget(1)
    assert all(p.is_meta for p in learner.model.parameters())
    assert all(v.is_meta for state in learner.opt.state.values() for v in state.values() if v.dim() > 0)
