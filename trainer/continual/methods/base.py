"""The interface every continual-learning method implements, and fine-tuning (the plain sequential method).

The runner calls, per task t: `start_task` -> for each iteration `loss` (then backward), `before_update`,
the optimizer step, `after_update` -> `end_task`; and `logits(x, j)` to test task j at any time.  A method
owns its trainable tensors (`param_groups`) and whatever it carries between tasks (Fisher, importances,
masks, coresets, embeddings).  `snapshot` / `restore` copy the trainable state for best-model restore.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ContinualConfig
from ..data import Task
from ..nets import MainNet, head_slice, orthogonal_penalty_and_grad


class Method:
    """Fine-tuning: one network, trained on each task in turn with nothing to protect the old ones."""

    joint = False  # True: trained once on all tasks (multitask), not task by task

    def __init__(self, cfg: ContinualConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.k = cfg.data.classes_per_task
        outputs = self.k * cfg.data.num_tasks if cfg.net.multi_head else self.k
        self.net = MainNet(cfg.net.hidden, outputs, cfg.data.num_tasks if cfg.net.task_identity else 0,
                           cfg.net.orthogonal_init).to(device)
        self._orthogonal_grad: torch.Tensor | None = None

    # --- what the runner calls --------------------------------------------------------------------

    def param_groups(self, task: int) -> list[dict]:
        return [{"params": list(self.net.parameters())}]

    def start_task(self, task: int, data: Task) -> None:
        pass

    def loss(self, x: torch.Tensor, y: torch.Tensor, task: int) -> torch.Tensor:
        return self.task_loss(x, y, task) + self.regulariser(task)

    def before_update(self, task: int, optimizer: torch.optim.Optimizer) -> None:
        """.grad holds the gradient of what `loss` built through autograd; closed-form gradients are added here
        (subclasses that override this call it); `optimizer` is about to step."""
        if self._orthogonal_grad is not None:
            w = self.net.lstm.weight_hh_l0
            w.grad = self._orthogonal_grad if w.grad is None else w.grad.add_(self._orthogonal_grad)
            self._orthogonal_grad = None

    def after_update(self, task: int) -> None:
        pass

    def end_task(self, task: int, data: Task) -> None:
        pass

    def logits(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.outputs(x, task)[:, self.head(task)]

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for g in self.param_groups(-1) for p in g["params"]]

    def restore(self, state: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, saved in zip((p for g in self.param_groups(-1) for p in g["params"]), state):
                p.copy_(saved)

    # --- shared pieces ----------------------------------------------------------------------------

    def head(self, task: int) -> slice:
        return head_slice(task, self.k, self.cfg.net.multi_head)

    def per_sample_heads(self, outputs: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """[B, outputs] -> [B, k]: each row's own task head (a batch that mixes tasks)."""
        columns = torch.arange(self.k, device=outputs.device).expand(len(tasks), -1)
        if self.cfg.net.multi_head:
            columns = columns + tasks[:, None] * self.k
        return outputs.gather(1, columns)

    def outputs(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.net(x, task)

    def task_loss(self, x: torch.Tensor, y: torch.Tensor, task: int) -> torch.Tensor:
        return F.cross_entropy(self.logits(x, task), y)

    def regulariser(self, task: int) -> torch.Tensor:
        """The orthogonal regulariser of W_hh when configured (any method), detached: its gradient is computed in
        closed form with the value and added in `before_update` (an autograd graph of ~10 ops costs more)."""
        lam = self.cfg.net.orthogonal_reg
        if lam <= 0:
            return torch.zeros((), device=self.device)
        value, grad = orthogonal_penalty_and_grad(self.net.lstm.weight_hh_l0)
        self._orthogonal_grad = grad.mul_(lam)
        return lam * value

    def named_weights(self) -> dict[str, torch.Tensor]:
        return dict(self.net.named_parameters())
