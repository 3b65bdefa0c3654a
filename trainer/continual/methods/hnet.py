"""Chunked hypernetwork (HNET): the main network owns no weights; a small MLP generates them per task.

[chunk embedding || task embedding] -> MLP (ReLU hidden layers) -> one chunk of `hnet_chunk_size` weights;
ceil(n / chunk_size) chunks cover the main network's n weights (the tail of the last chunk is unused).
Task embeddings ~N(0, hnet_task_emb_std), chunk embeddings ~N(0, hnet_chunk_emb_std), the MLP's layers
PyTorch's default init.  While learning task t the regulariser beta (1/t) sum_{t'<t} ||h(e_t') - target_t'||^2
keeps the weights of earlier tasks, with targets h(e_t') stored before task t; as published
(`flatten_and_remove_out_heads`), with one head per task each old task's term leaves out the other tasks'
output rows, so it constrains the shared weights and its own head only.  Every parameter of the hypernetwork
is in the optimizer, all task embeddings included (published: `hnet.parameters()`): the old ones move under
the regulariser and the weight decay; the future ones get no gradient, so Adam leaves them as drawn.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..data import Task
from ..nets import orthogonal_penalty
from .base import Method


class ChunkedHypernet(nn.Module):
    def __init__(self, num_weights: int, num_tasks: int, *, chunk_size: int, hidden: list[int], task_emb: int,
                 chunk_emb: int, task_emb_std: float, chunk_emb_std: float):
        super().__init__()
        self.num_weights, self.chunk_size = num_weights, chunk_size
        self.num_chunks = math.ceil(num_weights / chunk_size)
        self.chunk_emb = nn.Parameter(torch.randn(self.num_chunks, chunk_emb) * chunk_emb_std)
        self.task_emb = nn.ParameterList(nn.Parameter(torch.randn(task_emb) * task_emb_std) for _ in range(num_tasks))
        sizes = [task_emb + chunk_emb, *hidden, chunk_size]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.mlp = nn.Sequential(*layers)

    def forward(self, tasks: list[int]) -> torch.Tensor:
        """Flat main-network weights for each task: [len(tasks), num_weights]."""
        emb = torch.stack([self.task_emb[t] for t in tasks])
        inputs = torch.cat([self.chunk_emb[None].expand(len(tasks), -1, -1),
                            emb[:, None, :].expand(-1, self.num_chunks, -1)], dim=-1)
        return self.mlp(inputs).flatten(1)[:, :self.num_weights]


class HNET(Method):
    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        p = cfg.params
        self.net.requires_grad_(False)  # structure only: the weights come from the hypernetwork
        self.shapes = self.net.shapes
        self.hnet = ChunkedHypernet(self.net.num_weights(), cfg.data.num_tasks, chunk_size=p.hnet_chunk_size,
                                    hidden=list(p.hnet_hidden), task_emb=p.hnet_task_emb, chunk_emb=p.hnet_chunk_emb,
                                    task_emb_std=p.hnet_task_emb_std, chunk_emb_std=p.hnet_chunk_emb_std).to(device)
        self.targets: torch.Tensor | None = None
        self.kept = self._regularised_weights()

    def param_groups(self, task: int) -> list[dict]:
        return [{"params": list(self.hnet.parameters())}]

    def _regularised_weights(self) -> torch.Tensor:
        """[num_tasks, num_weights] 0/1: for each task, the generated weights its regulariser term compares, all
        but the output rows of the other tasks' heads (all of them with a single shared head)."""
        kept = torch.ones(self.cfg.data.num_tasks, self.net.num_weights())
        for t in range(self.cfg.data.num_tasks if self.cfg.net.multi_head else 0):
            rows = torch.zeros(self.net.outputs, dtype=torch.bool)
            rows[self.head(t)] = True
            views = self.unflatten(kept[t])
            views["head.weight"][~rows] = 0.0
            views["head.bias"][~rows] = 0.0
        return kept.to(self.device)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            out[name] = flat[start:start + n].view(shape)
            start += n
        return out

    def outputs(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.net(x, task, params=self.unflatten(self.hnet([task])[0]))

    def regulariser(self, task: int) -> torch.Tensor:
        reg = torch.zeros((), device=self.device)
        if self.cfg.net.orthogonal_reg > 0:
            reg = reg + self.cfg.net.orthogonal_reg * orthogonal_penalty(
                self.unflatten(self.hnet([task])[0])["lstm.weight_hh_l0"])
        if task > 0 and self.targets is not None:
            drift = ((self.hnet(list(range(task))) - self.targets) ** 2 * self.kept[:task]).sum()
            reg = reg + self.cfg.params.hnet_beta * drift / task
        return reg

    def start_task(self, task: int, data: Task) -> None:
        if task > 0:
            with torch.no_grad():
                self.targets = self.hnet(list(range(task))).clone()
