"""The LeadFL optimizer: one step of each variant against a hand computation, and the
``original`` variant against a direct transcription of the authors' training loop."""
import copy

import pytest
import torch
import torch.nn.functional as F

import leadfl_ext
from leadfl_ext import LeadFL, leadfl_param_groups

D = torch.float64


def quadratic_closure(w, c):
    """L(W) = 0.5 * sum(c * W^2), so grad L = c * W: gradients we can write down by hand."""
    def closure():
        w.grad = None
        loss = 0.5 * (c * w * w).sum()
        loss.backward()
        return loss
    return closure


def test_hessian_step_by_hand():
    w = torch.tensor([1.0, -2.0, 0.5], dtype=D, requires_grad=True)
    c = torch.tensor([1.0, 30.0, -4.0], dtype=D)
    lr, alpha, q = 0.1, 0.4, 0.2
    opt = LeadFL([w], lr=lr, alpha=alpha, q=q)
    opt.step(quadratic_closure(w, c))
    w0 = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    g = c * w0                                   # [1, -60, -2]
    g_look = c * (w0 - lr * g)                   # [0.9, 120, -2.8]
    r = torch.clamp(1 - (g_look - g), -q, q)     # 1.1 -> 0.2 ; -179 -> -0.2 ; 1.8 -> 0.2
    torch.testing.assert_close(r, torch.tensor([0.2, -0.2, 0.2], dtype=D))
    expected = w0 - lr * g - lr * alpha * r      # [0.892, 4.008, 0.692]
    torch.testing.assert_close(w.detach(), torch.tensor([0.892, 4.008, 0.692], dtype=D))
    torch.testing.assert_close(w.detach(), expected)


def test_hessian_step_with_momentum_by_hand():
    w = torch.tensor([1.0, -1.0], dtype=D, requires_grad=True)
    c = torch.tensor([2.0, 0.5], dtype=D)
    lr, alpha, q, mu = 0.1, 0.4, 0.2, 0.9
    opt = LeadFL([w], lr=lr, alpha=alpha, q=q, momentum=mu)
    closure = quadratic_closure(w, c)
    expected = torch.tensor([1.0, -1.0], dtype=D)
    v = None
    for _ in range(3):
        g = c * expected
        g_look = c * (expected - lr * g)
        r = torch.clamp(1 - (g_look - g), -q, q)
        v = g.clone() if v is None else mu * v + g
        expected = expected - lr * v - lr * alpha * r
        opt.step(closure)
        torch.testing.assert_close(w.detach(), expected)


def test_paper_steps_by_hand():
    w = torch.tensor([1.0, -3.0], dtype=D, requires_grad=True)
    c = torch.tensor([1.0, 2.0], dtype=D)
    lr, alpha, q = 0.1, 0.5, 0.2
    opt = LeadFL([w], lr=lr, alpha=alpha, q=q, variant="paper")
    closure = quadratic_closure(w, c)
    expected, d = torch.tensor([1.0, -3.0], dtype=D), torch.zeros(2, dtype=D)
    for _ in range(3):
        g = c * expected
        r = torch.clamp(1 - lr * g - d, -q, q)
        new = expected - lr * g - lr * alpha * r
        d, expected = new - expected, new
        opt.step(closure)
        torch.testing.assert_close(w.detach(), expected)
        torch.testing.assert_close(opt.state[w]["delta"], d)
    # First step by hand: g = [1, -6], R = clamp([0.9, 1.6]) = [0.2, 0.2], W = [1-0.1-0.01, -3+0.6-0.01]
    w2 = torch.tensor([1.0, -3.0], dtype=D, requires_grad=True)
    LeadFL([w2], lr=lr, alpha=alpha, q=q, variant="paper").step(quadratic_closure(w2, c))
    torch.testing.assert_close(w2.detach(), torch.tensor([0.89, -2.41], dtype=D))


def test_original_steps_by_hand():
    # Two batches of one epoch on one regularised tensor, momentum 0.1, SPEC §1.3.
    w = torch.tensor([1.0, -0.5], dtype=D, requires_grad=True)
    c = torch.tensor([1.0, 4.0], dtype=D)
    lr, alpha, q, mu = 0.1, 0.4, 0.2, 0.1
    opt = LeadFL([{"params": [w], "regularized": True}], lr=lr, alpha=alpha, q=q, variant="original", momentum=mu)
    closure = quadratic_closure(w, c)
    opt.reset_local_epoch()
    opt.step(closure)
    # batch 0: g = [1, -2]; v = g; W = [0.9, -0.3]; P = W, G = g
    torch.testing.assert_close(w.detach(), torch.tensor([0.9, -0.3], dtype=D))
    opt.step(closure)
    # batch 1: g = c*W = [0.9, -1.2]; v = 0.1*[1,-2] + g = [1.0, -1.4]; W' = [0.8, -0.16]
    # u = W' - P - G - 0.1 = [0.8-0.9-1-0.1, -0.16+0.3+2-0.1] = [-1.2, 2.04]; |u| = sqrt(1.44+4.1616)
    wp = torch.tensor([0.8, -0.16], dtype=D)
    u = torch.tensor([-1.2, 2.04], dtype=D)
    h = torch.clamp(torch.tensor([0.9, -1.2], dtype=D) + alpha * u / u.norm(), -q, q)   # [0.2, -0.2]
    v = 0.1 * torch.tensor([1.0, -1.4], dtype=D) + h
    torch.testing.assert_close(w.detach(), wp - lr * v)
    torch.testing.assert_close(opt.state[w]["prev_grad"], h)
    opt.reset_local_epoch()
    assert "prev_param" not in opt.state[w] and "prev_grad" not in opt.state[w]


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3, track_running_stats=False)
        self.fc = torch.nn.Linear(3 * 6 * 6, 4)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def authors_loop(model, batches, epochs, lr, alpha, q, momentum):
    """The authors' benign LeadFL client loop (fltk/core/client.py), transcribed statement by statement."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for _ in range(epochs):
        old_gradient_mine, old_params = {}, {}
        for i, (x, y) in enumerate(batches):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if i != 0:
                regular = 0
                for name, p in model.named_parameters():
                    if "weight" in name:
                        regular = regular + torch.norm(p - old_params[name] - old_gradient_mine[name]
                                                       - lr * torch.ones_like(p), 2)
                (alpha * regular).backward()          # no zero_grad: accumulates onto the task gradient
                torch.nn.utils.clip_grad_value_(model.parameters(), q)
                optimizer.step()
            for name, p in model.named_parameters():
                if "weight" in name:
                    old_gradient_mine[name] = p.grad.detach().clone()
                    old_params[name] = p.detach().clone()
    return model


def test_original_matches_transcription_of_authors_loop():
    torch.manual_seed(0)
    model = TinyNet().double()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 1, 6, 6, generator=gen, dtype=D), torch.randint(0, 4, (8,), generator=gen))
               for _ in range(4)]
    lr, alpha, q, mu = 0.05, 0.4, 0.2, 0.1
    expected = authors_loop(copy.deepcopy(model), batches, epochs=2, lr=lr, alpha=alpha, q=q, momentum=mu)

    ours = copy.deepcopy(model)
    opt = LeadFL(leadfl_param_groups(ours), lr=lr, alpha=alpha, q=q, variant="original", momentum=mu)
    for _ in range(2):
        opt.reset_local_epoch()
        for x, y in batches:
            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(ours(x), y)
                loss.backward()
                return loss
            opt.step(closure)
    for (name, a), (_, b) in zip(expected.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=name)
    # The regulariser actually acted: plain SGD with momentum ends elsewhere.
    sgd = copy.deepcopy(model)
    plain = torch.optim.SGD(sgd.parameters(), lr=lr, momentum=mu)
    for _ in range(2):
        for x, y in batches:
            plain.zero_grad()
            F.cross_entropy(sgd(x), y).backward()
            plain.step()
    assert not torch.allclose(sgd.fc.weight, ours.fc.weight, atol=1e-6)


def test_param_groups_split_weights_from_biases():
    groups = leadfl_param_groups(TinyNet())
    names = {True: 0, False: 0}
    for group in groups:
        names[group["regularized"]] += sum(p.numel() for p in group["params"])
    assert names[True] == 3 * 9 + 3 + 4 * 108       # conv.weight, bn.weight, fc.weight
    assert names[False] == 3 + 3 + 4                 # conv.bias, bn.bias, fc.bias


@pytest.mark.parametrize("variant", ["hessian", "paper"])
def test_unregularized_group_is_plain_sgd(variant):
    w = torch.tensor([1.0, -2.0], dtype=D, requires_grad=True)
    c = torch.tensor([3.0, 1.0], dtype=D)
    opt = LeadFL([{"params": [w], "regularized": False}], lr=0.1, variant=variant)
    opt.step(quadratic_closure(w, c))
    torch.testing.assert_close(w.detach(), torch.tensor([1.0 - 0.3, -2.0 + 0.2], dtype=D))


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0.0), "lr=0.0 is not allowed"),
    (dict(lr=-1.0), "lr=-1.0 is not allowed"),
    (dict(lr=0.1, alpha=-0.1), "alpha=-0.1 is not allowed"),
    (dict(lr=0.1, q=0.0), "q=0.0 is not allowed"),
    (dict(lr=0.1, q=float("nan")), "q=nan is not allowed"),
    (dict(lr=0.1, momentum=1.0), "momentum=1.0 is not allowed"),
    (dict(lr=0.1, variant="hessain"), "variant='hessain' is not one of hessian, paper, original"),
])
def test_bad_optimizer_settings_are_refused(kwargs, message):
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LeadFL([w], **kwargs)


def test_hessian_without_closure_says_why():
    w = torch.zeros(2, requires_grad=True)
    w.grad = torch.ones(2)
    with pytest.raises(ValueError, match="pass step\\(closure\\)"):
        LeadFL([w], lr=0.1).step()


def test_optimizer_uses_fused_op(monkeypatch):
    calls = []
    real = leadfl_ext.optim.fused_step_
    monkeypatch.setattr(leadfl_ext.optim, "fused_step_", lambda *a, **k: (calls.append(len(a[0])), real(*a, **k)))
    model = TinyNet()
    opt = LeadFL(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 6, 6), torch.randint(0, 4, (4,))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)
    assert calls == [6]   # one call for the whole parameter list


def test_paper_steps_with_momentum_by_hand():
    w = torch.tensor([1.0, -3.0], dtype=D, requires_grad=True)
    c = torch.tensor([1.0, 2.0], dtype=D)
    lr, alpha, q, mu = 0.1, 0.5, 0.2, 0.5
    opt = LeadFL([w], lr=lr, alpha=alpha, q=q, variant="paper", momentum=mu)
    closure = quadratic_closure(w, c)
    expected, d, v = torch.tensor([1.0, -3.0], dtype=D), torch.zeros(2, dtype=D), torch.zeros(2, dtype=D)
    for _ in range(3):
        g = c * expected
        shifted = expected - lr * mu * v                  # momentum part of the step
        r = torch.clamp(1 - lr * g - d, -q, q)
        new = shifted - lr * g - lr * alpha * r
        d, expected, v = new - expected, new, mu * v + g  # D = total change of the step
        opt.step(closure)
        torch.testing.assert_close(w.detach(), expected)
        torch.testing.assert_close(opt.state[w]["delta"], d)
