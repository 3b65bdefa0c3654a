"""Split AudioSet continual learning: data, networks, the methods' formulas, forgetting, the runner's contract."""
from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tqdm import tqdm

from trainer.continual.config import load_continual_config
from trainer.continual.data import DataError, load_pickle, make_tasks, synthetic
from trainer.continual.methods import METHODS
from trainer.continual.methods import ewc as ewc_module
from trainer.continual.methods.quadratic import QuadraticPenalty
from trainer.continual.methods.si import PathIntegral
from trainer.continual.nets import MainNet, lstm_explicit
from trainer.continual.runner import Runner, accuracy, draw_rows, transfer_metrics, validation

from .helpers import REPO, run_command


@pytest.fixture(scope="module")
def arrays():
    return synthetic(0)


@pytest.fixture(scope="module")
def five_tasks():
    """The methods' tests train a few hundred iterations: on the small-scale codes, which such short runs learn (on
    the VGGish-scale ones the LSTM's saturated gates need thousands of iterations before a task rises above chance)."""
    return make_tasks(*synthetic(0, codes="small"), num_tasks=5)


def test_synthetic_and_tasks_have_the_published_shapes(arrays):
    x, y, train_ind, test_ind = arrays
    assert x.shape == (100_000, 10, 128) and x.dtype == np.uint8 and len(train_ind) == 80_000
    tasks = make_tasks(*arrays)
    assert len(tasks) == 10 and all(len(t.classes) == 10 for t in tasks)
    assert sorted(c for t in tasks for c in t.classes) == list(range(100))
    assert tasks[0].classes == make_tasks(*arrays)[0].classes  # seeded permutation
    for t in tasks:
        assert (len(t.train_x), len(t.val_x), len(t.test_x)) == (7500, 500, 2000)
        assert torch.bincount(t.val_y, minlength=10).tolist() == [50] * 10  # stratified
        assert set(t.train_y.tolist()) == set(range(10))


def test_synthetic_classes_are_built_from_one_shared_basis(arrays):
    """The 100 class spectra (class means over samples and frames) span the 12 atoms' space only: 12 directions
    hold all but noise of their spread (independent class patterns would need ~100), and every class shares
    atoms with classes of other tasks."""
    x, y, _, _ = arrays
    spectra = np.stack([x[y == c].astype(np.float64).mean(axis=(0, 1)) for c in range(100)])
    centred = spectra - spectra.mean(0)
    energy = np.linalg.svd(centred, compute_uv=False) ** 2
    # the quantiser's clipping bends the sum a little: outside the 12 directions ~0.2% of the first one's energy
    assert energy[:12].sum() > 0.99 * energy.sum() and energy[12] < 5e-3 * energy[0]
    spread = x[:5000].astype(np.float64).std(axis=(0, 1))
    support = spectra > spectra.min(0) + 0.35 * spread  # codes well above their quietest class: the class's atoms
    tasks = make_tasks(*arrays)
    task_of = {c: t.index for t in tasks for c in t.classes}
    for c in range(100):
        others = {task_of[d] for d in range(100) if task_of[d] != task_of[c] and (support[c] & support[d]).any()}
        assert len(others) >= 5, c


def test_synthetic_codes_have_the_released_embeddings_statistics(arrays):
    """VGGish postprocessing: whitened components clipped to +-2 std and mapped onto 0..255 by truncation.  A
    unit-variance code then averages ~127 with a spread of ~56 (a Gaussian's: 127.0 and 56.2) and ~2.3% of its
    values clipped at each end; the stand-in's codes are sums of non-negative atoms on noise, so a little skewed."""
    x = arrays[0]
    codes = x.reshape(-1, 128)[::7].astype(np.float64)
    mean, std = codes.mean(0), codes.std(0)
    assert 120 < mean.min() and mean.max() < 134, (mean.min(), mean.max())
    assert 50 < std.min() and std.max() < 66, (std.min(), std.max())
    low, high = (x == 0).mean(), (x == 255).mean()
    assert 0.01 < low < 0.04 and 0.01 < high < 0.04 and 0.03 < low + high < 0.06, (low, high)
    small = synthetic(0, num_classes=4, train_per_class=20, test_per_class=5, codes="small")[0]
    assert small.mean() < 8 and (small == 255).sum() == 0  # the earlier scale, kept to reproduce its tables
    with pytest.raises(DataError, match="codes='pcm'.*data.synthetic_codes"):
        synthetic(0, num_classes=4, train_per_class=20, test_per_class=5, codes="pcm")


def _write(tmp_path, obj):
    path = tmp_path / "audioset.pickle"
    path.write_bytes(pickle.dumps(obj))
    return path


def test_pickle_loader_accepts_the_layout_and_rejects_malformed_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 10, 128), dtype=np.uint8)
    y = np.repeat(np.arange(4), 10)
    good = [x, y, np.arange(0, 30), np.arange(30, 40)]
    loaded = load_pickle(_write(tmp_path, good))
    assert loaded[0].shape == (40, 10, 128) and loaded[1].dtype == np.int64
    cases = [
        ([x, y, np.arange(30)], "expected a list \\[x, y, train_ind, test_ind\\].* of length 3"),
        ([x[:, :5], y, good[2], good[3]], "x has shape \\(40, 5, 128\\)"),
        ([x.astype(np.float32), y, good[2], good[3]], "x has dtype float32; expected uint8"),
        ([x, y[:10], good[2], good[3]], "y has shape \\(10,\\)"),
        ([x, y, np.arange(35, 45), good[3]], "train_ind must be a 1-D array of integer indexes"),
        ([x, y, np.arange(0, 31), good[3]], "train_ind and test_ind overlap"),
        ({"x": x}, "found dict"),
    ]
    for obj, message in cases:
        with pytest.raises(DataError, match=message):
            load_pickle(_write(tmp_path, obj))
    (tmp_path / "junk.pickle").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="junk.pickle: not a readable pickle"):
        load_pickle(tmp_path / "junk.pickle")
    with pytest.raises(DataError, match="no such file"):
        load_pickle(tmp_path / "missing.pickle")


def test_main_network_size_init_and_explicit_cell():
    net = MainNet(32, 100)
    assert net.num_weights() == 24_036
    bound = 1 / np.sqrt(128)
    assert net.lstm.weight_ih_l0.abs().max() <= bound and net.lstm.weight_ih_l0.abs().max() > 0.9 * bound
    x = torch.randint(0, 256, (3, 10, 128), dtype=torch.uint8)
    params = dict(net.named_parameters())
    torch.testing.assert_close(net(x, 0), lstm_explicit(params, x.float()), rtol=1e-4, atol=1e-4)
    mask = (torch.rand(32) > 0.5).float()
    torch.testing.assert_close(net(x, 0, mask=mask), lstm_explicit(params, x.float(), mask), rtol=1e-4, atol=1e-4)
    ortho = MainNet(32, 100, orthogonal_init=True).lstm.weight_hh_l0
    for block in ortho.chunk(4, 0):
        torch.testing.assert_close(block @ block.T, torch.eye(32), atol=1e-5, rtol=0)


def test_hypernetwork_generates_exactly_the_main_networks_weights():
    cfg = load_continual_config(["method=hnet"])
    method = METHODS["hnet"](cfg, torch.device("cpu"))
    assert method.hnet([0, 3]).shape == (2, 24_036) and method.hnet.num_chunks == 13
    assert sum(p.numel() for p in method.hnet.parameters()) < 24_036  # compression ratio < 1 (0.98)
    assert all(not p.requires_grad for p in method.net.parameters())  # the main net owns no trained weights


def test_hypernetwork_regulariser_constrains_each_old_task_on_the_shared_weights_and_its_own_head(five_tasks):
    """beta/t sum over old tasks of the squared drift of the generated weights, leaving out the other tasks' output
    rows (published `flatten_and_remove_out_heads`), against a loop over old tasks and named weights; every
    hypernetwork parameter is trained, old task embeddings included; the MLP keeps PyTorch's default init."""
    cfg = load_continual_config(["method=hnet", "data.num_tasks=5", "params.hnet_beta=0.7"])
    method = METHODS["hnet"](cfg, torch.device("cpu"))
    last = method.hnet.mlp[-1]
    bound = 1 / last.in_features ** 0.5
    assert last.weight.abs().max() <= bound and last.weight.abs().max() > 0.9 * bound and last.bias.abs().min() > 0
    method.start_task(3, five_tasks[3])
    targets = [method.unflatten(t) for t in method.hnet([0, 1, 2]).detach()]
    torch.manual_seed(1)
    with torch.no_grad():
        for p in method.hnet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    expected = torch.zeros(())
    for old in range(3):
        now = method.unflatten(method.hnet([old])[0])
        for name, w in now.items():
            drift = w - targets[old][name]
            if name.startswith("head."):
                drift = drift[10 * old:10 * old + 10]  # task `old`'s own output rows only
            expected = expected + (drift ** 2).sum()
    torch.testing.assert_close(method.regulariser(3), 0.7 * expected / 3, rtol=1e-5, atol=0)
    whole = ((method.hnet([0, 1, 2]) - method.targets) ** 2).sum()
    assert whole > 1.02 * expected  # with the other heads' rows it would be larger: the test tells the two apart
    trained = {id(p) for g in method.param_groups(3) for p in g["params"]}
    assert all(id(e) in trained for e in method.hnet.task_emb)
    old = method.hnet.task_emb[0].detach().clone()
    opt = torch.optim.Adam(method.param_groups(3), lr=1e-2)
    method.loss(five_tasks[3].train_x[:32], five_tasks[3].train_y[:32], 3).backward()
    opt.step()
    assert not torch.equal(method.hnet.task_emb[0], old)  # the regulariser moves old embeddings too


def test_masked_units_receive_zero_gradient(five_tasks):
    cfg = load_continual_config(["method=masking", "data.num_tasks=5"])
    method = METHODS["masking"](cfg, torch.device("cpu"))
    task = five_tasks[2]
    method.loss(task.train_x[:32], task.train_y[:32], 2).backward()
    off = method.masks[2] == 0
    assert off.sum() == int(32 * 0.6)
    rows = off.repeat(4)  # the masked units' rows in each gate block
    lstm = method.net.lstm
    for g in (lstm.weight_ih_l0.grad[rows], lstm.weight_hh_l0.grad[rows], lstm.bias_ih_l0.grad[rows],
              lstm.weight_hh_l0.grad[:, off], method.net.head.weight.grad[:, off]):
        assert torch.count_nonzero(g) == 0
    assert torch.count_nonzero(lstm.weight_ih_l0.grad[~rows]) > 0


def test_ewc_fisher_equals_brute_force_per_sample_gradients():
    torch.manual_seed(0)
    net = MainNet(4, 6)
    x = torch.randint(0, 20, (7, 10, 128), dtype=torch.uint8)
    y = torch.randint(0, 3, (7,))
    head = slice(3, 6)
    fisher = ewc_module.empirical_fisher(net, dict(net.named_parameters()), x, y, 1, head, chunk=3)
    expected = {k: torch.zeros_like(p) for k, p in net.named_parameters()}
    for i in range(len(x)):
        net.zero_grad()
        F.cross_entropy(net(x[i:i + 1], 1)[:, head], y[i:i + 1]).backward()
        for k, p in net.named_parameters():
            expected[k] += p.grad ** 2 / len(x)
    for k in expected:
        torch.testing.assert_close(fisher[k], expected[k], rtol=1e-3, atol=1e-7)


def test_online_ewc_applies_gamma_once_per_task(five_tasks, monkeypatch):
    cfg = load_continual_config(["method=ewc", "data.num_tasks=5", "params.ewc_gamma=0.5"])
    method = METHODS["ewc"](cfg, torch.device("cpu"))
    calls = iter([1.0, 2.0, 3.0])
    monkeypatch.setattr(ewc_module, "empirical_fisher",
                        lambda net, params, *a, **k: {n: torch.full_like(p, next(calls)) if n == "head.bias"
                                                      else torch.zeros_like(p) for n, p in params.items()})
    for t in range(3):
        method.end_task(t, five_tasks[t])
    assert torch.allclose(method.fisher["head.bias"], torch.tensor(3.0 + 0.5 * 2.0 + 0.25 * 1.0))


def test_si_importance_matches_a_hand_computed_quadratic():
    a, lr, xi, theta0 = 2.0, 0.1, 1e-3, 1.5
    theta = torch.tensor([theta0], requires_grad=True)
    si = PathIntegral([theta], xi)
    si.start_task()
    values = [theta0]
    for _ in range(5):
        g = a * theta.detach()  # gradient of 0.5 a theta^2
        si.before_update([g])
        with torch.no_grad():
            theta -= lr * g
        si.after_update()
        values.append(theta.item())
    si.end_task()
    omega = sum((values[k + 1] - values[k]) * -(a * values[k]) for k in range(5))
    assert si.importance[0].item() == pytest.approx(omega / ((values[-1] - theta0) ** 2 + xi), rel=1e-5)
    assert si.omega[0].item() == 0.0


def test_quadratic_penalty_value_and_gradient_equal_autograd():
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    penalty = QuadraticPenalty(params)
    weights = [torch.rand(5, 3), torch.rand(7)]
    penalty.set(weights)
    anchor = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p))
    value = penalty.evaluate(0.7)
    penalty.add_gradient()
    reference = [p.detach().clone().requires_grad_(True) for p in params]
    expected = 0.7 * sum((w * (r - a) ** 2).sum() for w, r, a in zip(weights, reference, anchor))
    expected.backward()
    torch.testing.assert_close(value, expected.detach())
    for p, r in zip(params, reference):
        torch.testing.assert_close(p.grad, r.grad)


def _orthogonality(w_hh: torch.Tensor) -> torch.Tensor:
    return sum(((block @ block.T - torch.eye(block.shape[0])) ** 2).sum() for block in w_hh.chunk(4, 0))


def test_orthogonal_regulariser_gradient_in_closed_form_equals_autograd(five_tasks):
    cfg = load_continual_config(["method=finetune", "data.num_tasks=5", "net.orthogonal_reg=0.3"])
    method = METHODS["finetune"](cfg, torch.device("cpu"))
    with torch.no_grad():  # away from the init, so that the penalty and its gradient are far from 0
        method.net.lstm.weight_hh_l0.add_(0.2 * torch.randn_like(method.net.lstm.weight_hh_l0))
    x, y = five_tasks[2].train_x[:32], five_tasks[2].train_y[:32]
    params = list(method.net.parameters())
    expected = method.task_loss(x, y, 2) + 0.3 * _orthogonality(method.net.lstm.weight_hh_l0)
    expected_grads = torch.autograd.grad(expected, params)
    loss = method.loss(x, y, 2)
    loss.backward()
    method.before_update(2, torch.optim.Adam(method.param_groups(2)))
    torch.testing.assert_close(loss, expected.detach())
    for p, g in zip(params, expected_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    task_only = torch.autograd.grad(method.task_loss(x, y, 2), method.net.lstm.weight_hh_l0)[0]
    assert (method.net.lstm.weight_hh_l0.grad - task_only).abs().max() > 0.1  # the regulariser's share is not lost


def _si_on_second_task(five_tasks, *overrides):
    """An SI method past task 0 (random importances, weights moved since), set up on task 1 with an Adam that has
    taken 3 steps of task 1 already, so that its moments are not zero."""
    cfg = load_continual_config(["method=si", "data.num_tasks=5", "net.orthogonal_reg=0.1", "params.si_lambda=5",
                                 *overrides])
    method = METHODS["si"](cfg, torch.device("cpu"))
    first, second = five_tasks[0], five_tasks[1]
    method.start_task(0, first)
    method.si.omega = [torch.rand_like(w) for w in method.si.omega]  # as if task 0 had been trained
    with torch.no_grad():
        for p in method.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    method.end_task(0, first)
    with torch.no_grad():
        for p in method.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    method.start_task(1, second)
    opt = torch.optim.Adam(method.param_groups(1), lr=1e-3)
    for i in range(3):
        opt.zero_grad()
        method.loss(second.train_x[32 * i:32 * i + 32], second.train_y[32 * i:32 * i + 32], 1).backward()
        method.before_update(1, opt)
        opt.step()
        method.after_update(1)
    method.si.omega = [torch.zeros_like(w) for w in method.si.omega]
    x, y = second.train_x[96:128], second.train_y[96:128]
    params = list(method.net.parameters())
    task_grads = torch.autograd.grad(method.task_loss(x, y, 1), params)
    total = method.task_loss(x, y, 1) + 0.1 * _orthogonality(method.net.lstm.weight_hh_l0) + 5 * sum(
        (imp * (p - a) ** 2).sum() for imp, p, a in zip(method.si.importance, params, method.penalty.anchor))
    total_grads = torch.autograd.grad(total, params)
    opt.zero_grad()
    method.loss(x, y, 1).backward()
    return method, opt, params, task_grads, total_grads


def test_si_integrates_the_adam_step_of_the_task_loss_alone(five_tasks):
    """Published `si_task_loss_only`: omega += delta (-g), g the task loss's gradient and delta the step Adam would
    take from g alone (computed here by hand from its moments), not the update it makes from the whole loss."""
    method, opt, params, task_grads, total_grads = _si_on_second_task(five_tasks)
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    method.before_update(1, opt)
    for p, total_g in zip(params, total_grads):  # the step itself follows the whole loss
        torch.testing.assert_close(p.grad, total_g, rtol=1e-4, atol=1e-6)
    assert all(torch.equal(before[k], opt.state[params[0]][k]) for k in before)  # the preview left Adam's state
    weights = [p.detach().clone() for p in params]
    opt.step()
    method.after_update(1)
    t = 4
    for p, g, omega, w in zip(params, task_grads, method.si.omega, weights):
        state = opt.state[p]  # after the real step: moments of the whole gradient; undo that step's share
        m_prev = (state["exp_avg"] - 0.1 * p.grad) / 0.9
        v_prev = (state["exp_avg_sq"] - 0.001 * p.grad ** 2) / 0.999
        m, v = 0.9 * m_prev + 0.1 * g, 0.999 * v_prev + 0.001 * g ** 2
        delta = -1e-3 * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
        torch.testing.assert_close(omega, delta * -g, rtol=1e-3, atol=1e-12)
        actual = (p.detach() - w) * -p.grad
        assert not torch.allclose(omega, actual, rtol=1e-2, atol=1e-12)  # the update made is not what was integrated


def test_si_without_task_loss_only_integrates_the_update_made_from_the_whole_loss(five_tasks):
    method, opt, params, _, total_grads = _si_on_second_task(five_tasks, "params.si_task_loss_only=false")
    method.before_update(1, opt)
    weights = [p.detach().clone() for p in params]
    opt.step()
    method.after_update(1)
    for p, g, omega, w in zip(params, total_grads, method.si.omega, weights):
        torch.testing.assert_close(omega, (p.detach() - w) * -g, rtol=1e-3, atol=1e-12)


def test_coresets_distillation_equals_a_loop_over_old_tasks_with_a_frozen_copy(five_tasks):
    """The replay batch spread over the old tasks as published (22 / 21 / 21, the extra one to a different old task
    from batch to batch) and the distillation loss against a frozen copy, task by task."""
    import copy

    cfg = load_continual_config(["method=coresets", "data.num_tasks=5", "params.coreset_size=20"])
    method = METHODS["coresets"](cfg, torch.device("cpu"))
    for t in range(3):
        method.start_task(t, five_tasks[t])
        with torch.no_grad():
            for p in method.net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        method.end_task(t, five_tasks[t])
    method.start_task(3, five_tasks[3])
    frozen = copy.deepcopy(method.net)
    with torch.no_grad():  # the current network has moved away from the teacher
        for p in method.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = five_tasks[3].train_x[:64], five_tasks[3].train_y[:64]
    state = method.gen.get_state()
    loss = method.loss(x, y, 3)
    method.gen.set_state(state)
    idx, weight = method.replay_indices()
    owners = idx // 20  # each old task's coreset: 20 stored inputs
    assert sorted(torch.bincount(owners).tolist()) == [21, 21, 22]  # 64 over 3 old tasks, the remainder spread
    assert torch.equal(weight, 1.0 / torch.bincount(owners)[owners])
    favoured = {int(torch.bincount(method.replay_indices()[0] // 20).argmax()) for _ in range(30)}
    assert favoured == {0, 1, 2}  # the extra sample goes to a different old task from batch to batch
    temp, expected = 2.0, F.cross_entropy(method.net(x, 3)[:, 30:40], y)
    for old in range(3):
        inputs = method.store[idx[owners == old]]
        target = F.softmax(frozen(inputs, old)[:, 10 * old:10 * old + 10] / temp, dim=1)
        log_p = F.log_softmax(method.net(inputs, old)[:, 10 * old:10 * old + 10] / temp, dim=1)
        expected = expected - 10.0 * temp ** 2 * (target * log_p).sum(1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_transfer_metrics_by_hand():
    m = np.array([[80.0, 10, 10], [60, 70, 10], [50, 65, 90]])
    out = transfer_metrics(m)
    assert out["during_accuracy"] == pytest.approx(80)
    assert out["final_accuracy"] == pytest.approx(205 / 3)
    assert out["backward_transfer"] == pytest.approx(((50 - 80) + (65 - 70)) / 2)
    assert out["forgetting"] == pytest.approx(((80 - 50) + (70 - 65)) / 2)


def _final(method: str, tasks, *overrides) -> dict:
    cfg = load_continual_config([f"method={method}", "data.num_tasks=5", "n_iter=600", "train.lr=2e-3",
                                 "train.use_best_models=false", "train.during_acc_criterion=0", *overrides])
    return Runner(cfg, tasks).run()


@pytest.fixture(scope="module")
def finetune(five_tasks):
    return _final("finetune", five_tasks)


def test_finetuning_forgets(finetune):
    assert finetune["final_accuracy"] < finetune["during_accuracy"] - 20, finetune["accuracy_matrix"]
    assert finetune["forgetting"] > 20


@pytest.mark.parametrize("method,overrides", [("ewc", ()), ("si", ()), ("coresets", ()),
                                              ("hnet", ("n_iter=1000", "train.weight_decay=0"))])
def test_methods_protect_old_tasks(five_tasks, finetune, method, overrides):
    """Each method forgets far less than fine-tuning does (which loses ~40 points of what it learnt), and ends above
    it (HNET learns slowest in this short run: its during accuracy is the lowest)."""
    result = _final(method, five_tasks, *overrides)
    assert result["forgetting"] < finetune["forgetting"] - 20, (result["accuracy_matrix"], finetune)
    assert result["final_accuracy"] > finetune["final_accuracy"] + 5, (result["accuracy_matrix"], finetune)


def test_joint_rows_stay_in_their_task_and_cover_it():
    sizes = torch.tensor([5, 3, 7])
    tasks = torch.randint(3, (4000,), generator=torch.Generator().manual_seed(1))
    rows = draw_rows(sizes, tasks, torch.Generator().manual_seed(2))
    starts = torch.tensor([0, 5, 8])
    assert bool(((rows >= starts[tasks]) & (rows < starts[tasks] + sizes[tasks])).all())
    assert set(rows.tolist()) == set(range(15))  # every train sample of every task can be drawn


def test_multitask_learns_every_task_through_its_own_head(five_tasks):
    cfg = load_continual_config(["method=multitask", "data.num_tasks=5", "n_iter=300", "train.lr=2e-3"])
    runner = Runner(cfg, five_tasks)
    outputs = torch.randn(6, 50)
    tasks = torch.tensor([0, 4, 2, 2, 1, 3])
    picked = runner.method.per_sample_heads(outputs, tasks)
    assert torch.equal(picked, torch.stack([outputs[i, 10 * t:10 * t + 10] for i, t in enumerate(tasks.tolist())]))
    result = runner.run()
    assert len(result["accuracy_matrix"]) == 1 and min(result["accuracy_matrix"][0]) > 50, result["accuracy_matrix"]
    assert result["final_accuracy"] == result["during_accuracy"] and result["backward_transfer"] == 0


def test_from_scratch_tests_each_task_with_its_own_network(five_tasks):
    cfg = load_continual_config(["method=from_scratch", "data.num_tasks=5", "n_iter=100"])
    result = Runner(cfg, five_tasks[:3]).run()
    matrix = np.array(result["accuracy_matrix"])
    assert np.array_equal(matrix[-1], np.diag(matrix)) and result["forgetting"] == 0, matrix


def test_slow_learner_gives_the_heads_their_own_learning_rate(five_tasks):
    cfg = load_continual_config(["method=slow_learner", "data.num_tasks=5", "train.lr=1e-5", "params.head_lr=3e-3"])
    runner = Runner(cfg, five_tasks)
    lstm_group, head_group = runner._optimizer(0).param_groups
    net = runner.method.net
    assert lstm_group["lr"] == 1e-5 and head_group["lr"] == 3e-3
    assert {id(p) for p in lstm_group["params"]} == {id(p) for p in net.lstm.parameters()}
    assert {id(p) for p in head_group["params"]} == {id(p) for p in net.head.parameters()}


def test_stopping_criterion_ends_the_run_after_the_failing_task(five_tasks):
    cfg = load_continual_config(["method=finetune", "data.num_tasks=5", "n_iter=20", "train.during_acc_criterion=99.5"])
    result = Runner(cfg, five_tasks).run()
    assert len(result["accuracy_matrix"]) == 1
    assert result["stopped_early"].startswith("task 0 during accuracy") and "< 99.5%" in result["stopped_early"]


def test_best_model_restore_keeps_the_latest_improvement_in_accuracy_or_loss(five_tasks):
    """A snapshot at every check that improves the validation accuracy or the validation loss (each on its own best
    so far); the latest one is restored."""
    cfg = load_continual_config(["method=finetune", "data.num_tasks=5", "n_iter=800", "train.lr=1e-2",
                                 "train.use_best_models=true", "train.best_every=50"])
    runner = Runner(cfg, five_tasks)
    runner.train_task(0, tqdm(disable=True))
    checks = [(r["val_accuracy"], r["val_loss"]) for r in runner.log_rows if "val_accuracy" in r]
    assert len(checks) == 16
    better_acc = [i for i, (acc, _) in enumerate(checks) if acc > max([a for a, _ in checks[:i]], default=-1)]
    better_loss = [i for i, (_, loss) in enumerate(checks) if loss < min([v for _, v in checks[:i]], default=1e9)]
    latest = max(better_acc + better_loss)
    assert latest < len(checks) - 1, checks  # else the last weights would pass without a restore
    assert set(better_loss) - set(better_acc), checks  # some snapshots only the loss rule takes
    acc, loss = validation(runner.method, five_tasks[0].val_x, five_tasks[0].val_y, 0)
    assert (acc, loss) == pytest.approx(checks[latest])
    assert acc == accuracy(runner.method, five_tasks[0].val_x, five_tasks[0].val_y, 0)


def test_launcher_contract(tmp_path):
    done = run_command([sys.executable, str(REPO / "launch" / "continual.py"), "method=slow_learner", "n_iter=30",
                        "data.num_tasks=2", f"out={tmp_path}", "name=r"])
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "slow_learner" / "r"
    assert f"run directory: {folder}" in done.stdout
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["method"] == "slow_learner" and len(summary["accuracy_matrix"]) == 2
    assert {"during_accuracy", "final_accuracy", "backward_transfer"} <= set(summary)
    assert (folder / "accuracy_matrix.png").stat().st_size > 1000
    bad = run_command([sys.executable, str(REPO / "launch" / "continual.py"), "method=nope"])
    assert bad.returncode == 2 and "method=nope" in bad.stderr and "finetune" in bad.stderr
    bad = run_command([sys.executable, str(REPO / "launch" / "continual.py"), "method=ewc", "data.pickle=/no/file"])
    assert bad.returncode == 2 and "/no/file: no such file" in bad.stderr
