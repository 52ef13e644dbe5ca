"""MoSA: a mixture of sparse adapters, trained one sparse module at a time, merged at eval.

Zhang, Zou, An, Liu, Zhang, "MoSA: Mixture of Sparse Adapters for Visual Efficient Tuning",
arXiv:2312.02923 (2023; the first version is titled "Split & Merge: Unlocking the Potential of
Visual Adapters via Sparse Training"). Official code: github.com/Theia-4869/MoSA.

*Split.* A standard AdaptFormer-style adapter beside the MLP of every block (its own LayerNorm,
a dense down-projection, GELU, dropout, an up-projection) has its up-projection ``W_up``
(d x r) split into N non-overlapping sparse modules: every entry of ``W_up`` is owned by exactly
one module (a uniformly random, balanced partition, element by element), ``M_k`` is the 0/1 mask
of module k's entries and ``M_1 + ... + M_N = 1``. Every module also has an up bias ``b_k`` of
its own (the official ``ADAPTER.BIAS = True``: biases are not split).

*Train.* In every training forward each block draws one module ``k ~ Uniform{1..N}`` (from
torch's global RNG; one draw for the whole batch, a fresh draw per block and per call) and
computes

    h = dropout(GELU(W_down LN_a(x) + b_down))
    x <- x + MLP(LN(x)) + s * ((M_k * W_up) h + b_k)

so a step trains only module k's entries of ``W_up`` (plus the dense down-projection and LN_a).
Outputs are not rescaled during training.

*Merge.* In eval mode the N modules are merged into one complete adapter as the official
``merge(mode="add")`` does: the average of the N module adapters,

    x <- x + MLP(LN(x)) + s * ((W_up / N) h + mean_k b_k),

which equals the expectation of the training output over the draw of k (the last layer is the
only random one), as dropout's inference rule does. Inference costs exactly one standard adapter.

Initialisation (official ``vit_mosa.py``): ``W_down`` Kaiming-uniform (a = sqrt(5)), ``b_down``,
``W_up`` and every ``b_k`` zero, ``LN_a`` weight 1, bias 0 (eps 1e-6): the adapted model is the
frozen one at initialisation. Defaults are the official VTAB-1k script
(``scripts/mosa/vit/VTAB/vtab.sh`` with ``src/configs/config.py``): bottleneck r = 16,
N = ``EXPERT_NUM`` = 4, s = ``SCALAR`` = 0.1, dropout 0.1, ``STYLE = "AdaptFormer"``,
``SHARE = "down"`` (the down-projection stays dense and shared; only the up-projection is
split), ``MERGE = "add"``.

The partition is drawn once, from ``partition_seed + block`` (its own generator, independent of
the global RNG), and kept as a non-persistent buffer: a checkpoint stores only the weights, and
rebuilding the adapter from its saved config redraws the same partition.

*Consistency loss* (the official VTAB-1k recipe: ``MODEL.ADAPTER.ADDITIONAL True``,
``REG_WEIGHT 1.0``, ``ADD_WEIGHT 0.0`` in ``scripts/mosa/vit/VTAB/vtab.sh``). Every training batch
runs through the model a second time, with its own module draws, and the loss gains

    L_cons = w * (KL(sg(q) || p) + KL(sg(p) || q)) / 2,    p = softmax(z1), q = softmax(z2),

z1 the logits of the task's forward (whose cross-entropy is the task loss), z2 those of the
second forward, sg a stop-gradient, KL summed over classes and averaged over the batch, in
float32 (``symmetric_KL_loss`` in ``src/solver/losses.py``: ``F.kl_div(log_softmax(z1),
softmax(z2.detach()), reduction="batchmean")`` plus the mirrored term, times 0.5; added to the
cross-entropy in ``forward_one_batch``, ``src/engine/trainer.py``). Each half pulls one draw's
prediction towards the other's; the second forward's cross-entropy is not added
(``ADD_WEIGHT = 0``). ``consistency_weight`` is w (official ``REG_WEIGHT`` = 1; 0 turns the term
and its second forward off). It is returned by :meth:`MoSA.extra_loss` as ``consistency``; a
dense task's logits (B, C, H, W) are treated per position (class dimension 1).

``merge()`` (adaptbench's contract: fold into the *backbone* weights) is impossible: the adapter
has a GELU, so ``mergeable = False``. MoSA's own "merge" (of the sparse modules into one
adapter) is what eval mode computes, by construction.

Departures from the official code, and why:

* The official code keeps N dense copies of the up-projection (all zero at init) and multiplies
  each copy's gradient by its mask after ``backward``. Entries outside a copy's mask therefore
  stay exactly zero (zero gradient; Adam and decoupled weight decay leave zeros at zero), so one
  tensor ``W_up`` holding the union of the N modules, masked in the forward, gives the same
  values and gradients with 1/N of the storage.
* The module draw uses torch's global RNG (``torch.manual_seed`` reproduces it) rather than
  Python's ``random``; the partition is a seeded ``randperm`` cut into N equal runs rather than
  ``kthvalue`` bins of a uniform score (the same distribution: a random balanced partition).
* The official options to split the down-projection too (``SHARE = "up"`` / ``None``),
  ``MERGE = "joint"``, the deep hidden-state regulariser (``DEEPREG``) and the second
  forward's own cross-entropy (``ADD_WEIGHT``, 0 in the VTAB script) are not offered.
* The full text of the paper could not be read here; which of these choices the paper calls its
  "hierarchical sparse strategy" is not settled from the code alone (the dense shared
  down-projection with a sparse up-projection is the structural choice the official scripts make).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_adapter
from .base import Adapter, AdapterConfig, blocks_of, require
from .hooks import LossContext
from .layers import ACTIVATIONS, Bottleneck, ParallelBranch


@dataclass
class MoSAConfig(AdapterConfig):
    bottleneck: int = field(default=16, metadata={"help": "hidden width r of the adapter (official VTAB-1k: 16)"})
    num_modules: int = field(
        default=4, metadata={"help": "N: sparse modules the up-projection is split into (official EXPERT_NUM)"}
    )
    scale: float = field(default=0.1, metadata={"help": "s in x + MLP(LN(x)) + s * adapter(x)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the adapter's hidden activations"})
    act: str = field(default="gelu", metadata={"help": f"hidden activation, one of {', '.join(ACTIVATIONS)}"})
    partition_seed: int = field(
        default=0, metadata={"help": "seed of the random partition of W_up (block b uses seed + b)"}
    )
    consistency_weight: float = field(
        default=1.0, metadata={"help": "w of the two-draw symmetric-KL consistency loss (official REG_WEIGHT 1; "
                                       "0: off, no second forward)"}
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )

    def validate(self) -> None:
        require(self.bottleneck >= 1, f"mosa option bottleneck={self.bottleneck}: expected an integer >= 1")
        require(self.num_modules >= 1, f"mosa option num_modules={self.num_modules}: expected an integer >= 1")
        require(self.scale == self.scale and abs(self.scale) != float("inf"),
                f"mosa option scale={self.scale}: expected a finite number")
        require(0.0 <= self.dropout < 1.0, f"mosa option dropout={self.dropout}: expected 0 <= dropout < 1")
        require(self.act in ACTIVATIONS, f"mosa option act={self.act!r}: expected one of {sorted(ACTIVATIONS)}")
        require(self.partition_seed >= 0, f"mosa option partition_seed={self.partition_seed}: expected >= 0")
        require(0.0 <= self.consistency_weight < float("inf"),
                f"mosa option consistency_weight={self.consistency_weight}: expected a finite number >= 0")


def symmetric_kl(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``(KL(sg(q) || p) + KL(sg(p) || q)) / 2`` of the softmaxes p, q of two logit tensors over
    dimension 1, summed over classes and averaged over the rest (the batch): each half moves
    only the prediction it compares against the other, detached one."""
    log_p = F.log_softmax(first.float(), dim=1)
    log_q = F.log_softmax(second.float(), dim=1)
    return (_kl(log_q.detach(), log_p) + _kl(log_p.detach(), log_q)) / 2


def _kl(log_target: torch.Tensor, log_input: torch.Tensor) -> torch.Tensor:
    """KL(target || input) from log-probabilities, summed over dim 1, averaged over the rest."""
    return (log_target.exp() * (log_target - log_input)).sum(dim=1).mean()


def balanced_partition(shape: tuple[int, ...], num_modules: int, generator: torch.Generator) -> torch.Tensor:
    """The owning module (0..N-1) of every entry of a tensor of ``shape``: a uniformly random
    partition whose N parts differ in size by at most one entry."""
    count = 1
    for size in shape:
        count *= size
    order = torch.randperm(count, generator=generator)
    owner = torch.empty(count, dtype=torch.long)
    owner[order] = torch.arange(count) * num_modules // count  # N consecutive runs of the shuffle
    return owner.view(shape)


class SparseModuleBottleneck(Bottleneck):
    """``LN_a`` then :class:`Bottleneck` whose up-projection is split into N sparse modules.

    Training: one module ``k`` drawn per call, output ``(M_k * W_up) h + b_k``; eval: the merged
    adapter ``(W_up / N) h + mean_k b_k``. ``active_module`` records the last draw.
    """

    def __init__(self, dim: int, hidden: int, num_modules: int, partition: torch.Tensor, act: str = "gelu",
                 dropout: float = 0.0, device=None, dtype=None):
        super().__init__(dim, hidden, act=act, dropout=dropout, init="kaiming", bias=True,
                         device=device, dtype=dtype)
        self.num_modules = num_modules
        self.norm = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        # every module owns a full up bias (the official BIAS=True), so the Linear's single bias goes
        self.up.register_parameter("bias", None)
        self.up_bias = nn.Parameter(torch.zeros(num_modules, dim, device=device, dtype=dtype))
        # non-persistent: redrawn from the config's seed, never stored in a checkpoint
        self.register_buffer("partition", partition.to(device), persistent=False)
        self.active_module: int | None = None

    def module_mask(self, module: int) -> torch.Tensor:
        """``M_k``: 1 on the entries of ``W_up`` that module ``k`` owns."""
        return (self.partition == module).to(self.up.weight.dtype)

    def sample_module(self) -> int:
        return int(torch.randint(self.num_modules, ()).item())

    def up_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the up-projection this call uses."""
        if self.training:
            self.active_module = self.sample_module()
            return self.up.weight * self.module_mask(self.active_module), self.up_bias[self.active_module]
        return self.up.weight / self.num_modules, self.up_bias.mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.act(self.down(self.norm(x))))
        weight, bias = self.up_projection()
        return F.linear(hidden, weight, bias)


class MoSA(Adapter):
    """MoSA (Zhang et al. 2023): adapter split into sparse modules, one active per step"""

    mergeable = False  # the GELU forbids folding into the backbone; eval already merges the modules
    stochastic_training = True  # one module drawn per forward in training, all merged at eval
    version = 2  # 2: the two-draw consistency loss of the official VTAB recipe

    def _attach(self, backbone) -> None:
        config: MoSAConfig = self.config
        dim = backbone.anatomy.embed_dim
        require(config.num_modules <= dim * config.bottleneck,
                f"mosa option num_modules={config.num_modules}: expected at most {dim * config.bottleneck}, "
                f"the entries of the {dim}x{config.bottleneck} up-projection, so that no module is empty")
        self.branches: dict[int, ParallelBranch] = {}
        for block in blocks_of(config.blocks, backbone):
            wrapper = self.wrap_site(
                "mlp", block, lambda base, b=block: ParallelBranch(base, self.make_module(base, dim, b), config.scale,
                                                                   input="residual")
            )
            self.branches[block] = wrapper
            for name, param in wrapper.adapter.named_parameters():
                self.declare(f"blocks.{block}.mlp.{name}", param)

    def extra_loss(self, context: LossContext) -> dict[str, torch.Tensor]:
        """The consistency term between the task's forward and a second one with fresh draws."""
        weight = self.config.consistency_weight
        # in eval mode both forwards are the merged adapter: the term is 0, skip its forward
        if weight == 0 or not self.backbone.training:
            return {}
        return {"consistency": weight * symmetric_kl(context.outputs, context.forward(context.inputs))}

    def inference_params(self) -> int:
        # evaluation runs one merged adapter: the N per-module up biases average into one
        merged_away = sum((b.adapter.num_modules - 1) * b.adapter.up_bias.shape[1] for b in self.branches.values())
        return self.trainable_count() - merged_away

    def make_module(self, branch: nn.Module, dim: int, block: int) -> SparseModuleBottleneck:
        config: MoSAConfig = self.config
        reference = next(branch.parameters())
        generator = torch.Generator().manual_seed(config.partition_seed + block)
        partition = balanced_partition((dim, config.bottleneck), config.num_modules, generator)
        return SparseModuleBottleneck(dim, config.bottleneck, config.num_modules, partition, act=config.act,
                                      dropout=config.dropout, device=reference.device, dtype=reference.dtype)


register_adapter("mosa", MoSAConfig, MoSA)
