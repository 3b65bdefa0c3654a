"""Chunked hypernetwork (HNET): the main network owns no weights; a small MLP generates them per task.

[chunk embedding || task embedding] -> MLP (ReLU hidden layers) -> one chunk of `hnet_chunk_size` weights;
ceil(n / chunk_size) chunks cover the main network's n weights (the tail of the last chunk is unused).
Task embeddings ~N(0, hnet_task_emb_std), chunk embeddings ~N(0, hnet_chunk_emb_std).  While learning
task t the regulariser beta (1/t) sum_{t'<t} ||h(e_t') - target_t'||^2 keeps the weights of earlier tasks,
with targets h(e_t') stored before task t.
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
        with torch.no_grad():  # start near the main network's own init scale rather than saturating its gates
            self.mlp[-1].weight.mul_(0.1)
            self.mlp[-1].bias.zero_()

    def forward(self, tasks: list[int]) -> torch.Tensor:
        """Flat main-network weights for each task: [len(tasks), num_weights]."""
        emb = torch.stack([self.task_emb[t] for t in tasks])
        inputs = torch.cat([self.chunk_emb[None].expand(len(tasks), -1, -1),
                            emb[:, None, :].expand(-1, self.num_chunks, -1)], dim=-1)
        return self.mlp(inputs).flatten(1)[:, :self.num_weights]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.chunk_emb, *self.mlp.parameters()]


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

    def param_groups(self, task: int) -> list[dict]:
        current = [self.hnet.task_emb[task]] if task >= 0 else list(self.hnet.task_emb)
        return [{"params": self.hnet.shared_parameters() + current}]

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
            drift = ((self.hnet(list(range(task))) - self.targets) ** 2).sum()
            reg = reg + self.cfg.params.hnet_beta * drift / task
        return reg

    def start_task(self, task: int, data: Task) -> None:
        if task > 0:
            with torch.no_grad():
                self.targets = self.hnet(list(range(task))).clone()
