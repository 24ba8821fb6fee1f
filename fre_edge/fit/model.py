"""The whole detector as one torch module: uint8 pixels in, image score and anomaly map out.

This module is both what fitting uses to score images and what ``fre_edge.export`` traces, so the
exported graph and the fitting-side reference are the same code.

Per layer, the FRE head never forms a D x D matrix. With d = x - mu (pooled features, flattened,
D = C x h x w) and V the k x D components, it comes in one of two forms, chosen by ``head_form``:

``reconstruct`` -- two thin matmuls::

    z = x @ V^T - b,  b = mu @ V^T            [N, k]
    e = d - z @ V                              [N, D]
    score = sum(e^2),  map = mean_c(e^2)       [N], [N, h, w]

``one_pass`` -- reads V once. Per grid position s, with V_s the k x C block of V at s::

    u_s = V_s d_s   (one grouped 1x1 convolution, groups = h x w)       [N, h*w, k]
    z = sum_s u_s
    |e_s|^2 = |d_s|^2 - 2 u_s . z + z^T G_s z,   G_s = V_s V_s^T        [N, h*w]

G_s is k x k and symmetric, so its upper triangle (k(k+1)/2 values per position) is stored. At batch 1
a matrix-vector product is bound by memory traffic, not arithmetic, so the head costs what it reads:
4 D k bytes twice for ``reconstruct``; 4 D k + 4 h w k(k+1)/2 once for ``one_pass``. ``one_pass`` is
chosen when its Gram triangles are at most half the reconstruction matrix, i.e. k + 1 <= C (ResNet
layer3: C = 256 or 1024, k <= N images); EfficientNet-Lite0's blocks.10 has C = 112, so with more than
111 components it keeps ``reconstruct``. ``benchmarks/export_head_cost.py`` times both forms at batch 1
and 8 in the same rounds and checks that the rule picks the faster one at batch 1 (results in
``benchmarks/results/export_head_cost_<isa>.md``); a batched matrix product can run more efficiently than the
grouped convolution, so ``fre-edge export --head-form reconstruct`` may suit a line that always runs
large batches.

Precision: ``one_pass`` gets |e_s|^2 as a difference of larger terms, so its relative error is largest
on good images (whose residual is smallest); ``tests/test_export.py`` checks both forms agree on real
features.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..images import input_hw
from .pca import Subspace


from ..choices import HEAD_FORMS  # noqa: E402


MAX_LOG_SCORE = 80.0  # the position-free term's log is capped here: exp(80) is far above any score yet finite in f32


def head_form(n_components: int, channels: int) -> str:
    """``one_pass`` when its k(k+1)/2 Gram values per position are at most half of the C x k it saves."""
    return "one_pass" if n_components + 1 <= channels else "reconstruct"


def one_pass_constants(mean: torch.Tensor, components: torch.Tensor, shape: tuple[int, int, int]) -> dict:
    """Constants of the ``one_pass`` head, computed in float64 and stored as float32.

    ``mean_sc`` [h*w, C]; ``weight`` [h*w*k, C, 1, 1] (grouped conv: group s holds V_s);
    ``gram`` [k(k+1)/2, h*w] (upper triangles of G_s, off-diagonal entries doubled);
    ``triu`` [k(k+1)/2] flat indices of the upper triangle of a k x k matrix.
    """
    C, h, w = shape
    S = h * w
    V = components.double()  # [k, D], D ordered (c, h, w)
    k = V.shape[0]
    Vs = V.reshape(k, C, S).permute(2, 0, 1)  # [S, k, C]
    G = Vs @ Vs.transpose(1, 2)  # [S, k, k]
    iu = torch.triu_indices(k, k)
    weight = torch.where(iu[0] == iu[1], 1.0, 2.0).double()
    return {
        "mean_sc": mean.double().reshape(C, S).T.float().contiguous(),
        "weight": Vs.reshape(S * k, C, 1, 1).float().contiguous(),
        "gram": (G[:, iu[0], iu[1]] * weight).T.float().contiguous(),
        "triu": (iu[0] * k + iu[1]).long(),
    }


class FREHead(nn.Module):
    def __init__(self, subspace: Subspace, shape: tuple[int, int, int], form: str | None = None):
        super().__init__()
        C, h, w = shape
        comps = subspace.components.float()  # [k, D]
        if comps.shape[1] != C * h * w:
            raise ValueError(f"components have {comps.shape[1]} features, layer gives {C}x{h}x{w}")
        self.shape = (C, h, w)
        self.form = form or head_form(comps.shape[0], C)
        if self.form not in HEAD_FORMS[1:]:  # the concrete forms; in_form resolves "auto"
            raise ValueError(f"unknown head form {self.form!r}")
        self.register_buffer("mean", subspace.mean.float().clone())
        self.register_buffer("components", comps.clone())  # [k, D]
        if self.form == "reconstruct":
            self.register_buffer("bias", self.mean @ comps.T, persistent=False)  # [k]
        else:
            for name, value in one_pass_constants(self.mean, comps, self.shape).items():
                self.register_buffer(f"op_{name}", value, persistent=False)

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    def in_form(self, form: str) -> "FREHead":
        """This head (same mean and components) in ``form``; ``auto`` picks it by ``head_form``."""
        if form not in HEAD_FORMS:
            raise ValueError(f"unknown head form {form!r}")
        form = head_form(self.n_components, self.shape[0]) if form == "auto" else form
        if form == self.form:
            return self
        sub = Subspace(self.mean, self.components, torch.full((1,), float("nan")), "as fitted")
        return FREHead(sub, self.shape, form=form)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e2 = self._reconstruct(feat) if self.form == "reconstruct" else self._one_pass(feat)
        C, h, w = self.shape
        return e2.sum(1), e2.reshape(feat.shape[0], -1, h, w).sum(1) / C

    def _reconstruct(self, feat: torch.Tensor) -> torch.Tensor:
        """e^2 per feature, [N, D]."""
        x = feat.reshape(feat.shape[0], -1)
        # x V^T as linear(): ONNX Gemm(transB=1) reading V itself, so the file holds V once (a separate
        # V^T buffer would be a second constant of the same size)
        z = F.linear(x, self.components, -self.bias)
        # the residual's negative, z V - (x - mu) (e * e is the same, bit for bit): written as (x - mu) - z V,
        # OpenVINO folds the minus into V, and an INT8 V then loses its compressed kernel (decompressed to f32 at
        # load; benchmarks/results/head_levers_*.md)
        e = z @ self.components - (x - self.mean)
        return e * e

    def _one_pass(self, feat: torch.Tensor) -> torch.Tensor:
        """|e_s|^2 per grid position, [N, h*w]."""
        n = feat.shape[0]
        C, h, w = self.shape
        k = self.n_components
        # [N, C, h*w] -> [N, h*w, C] as a 3-d transpose: OpenVINO folds it into its channels-last layout
        # (profiled on resnet50: a 4-d permute to [N, h, w, C] cost 50 µs plus a 14 µs reorder)
        d = feat.reshape(n, C, h * w).transpose(1, 2) - self.op_mean_sc
        u = F.conv2d(d.reshape(n, h * w * C, 1, 1), self.op_weight, groups=h * w).reshape(n, h * w, k)
        z = u.sum(1)  # [N, k]
        zz = (z[:, :, None] * z[:, None, :]).reshape(n, k * k).index_select(1, self.op_triu)
        e2 = (d * d).sum(2) - 2.0 * (u * z[:, None, :]).sum(2) + zz @ self.op_gram
        return torch.clamp(e2, min=0.0)


class LocalHead(nn.Module):
    """Position-free FRE: one subspace of local feature vectors, shared by every location of every picture.

    Each location's vector is the mean of its ``window`` x ``window`` neighbourhood (C channels, unpooled
    grid); PCA of those vectors over all locations of the good pictures describes what any normal patch looks
    like, wherever it lies. A picture's score is its worst location's squared reconstruction error, so a
    small defect counts as much wherever the part sits in the frame: the per-picture subspace of
    :class:`FREHead` ties each feature to a position, and parts that move in the fixture blur it.
    """

    def __init__(self, subspace: Subspace, window: int = 3):
        super().__init__()
        self.window = int(window)
        self.register_buffer("mean", subspace.mean.float().reshape(-1).clone())  # [C]
        self.register_buffer("components", subspace.components.float().clone())  # [k, C]

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    @staticmethod
    def vectors(feat: torch.Tensor, window: int = 3) -> torch.Tensor:
        """[N, h*w, C] local vectors: each location's neighbourhood mean (borders average what lies inside)."""
        x = F.avg_pool2d(feat, window, 1, window // 2, count_include_pad=False) if window > 1 else feat
        return x.flatten(2).transpose(1, 2)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score [N]: the largest location error, errors [N, h, w])."""
        d = self.vectors(feat, self.window) - self.mean
        e = (d @ self.components.T) @ self.components - d
        e2 = (e * e).sum(2)
        return e2.amax(1), e2.reshape(feat.shape[0], *feat.shape[2:])


def fuse_position_free(global_score: torch.Tensor, local_score: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``max(g, exp(mu_g + sigma_g (log l - mu_l) / sigma_l))``, the exponent capped at ``MAX_LOG_SCORE``: the
    position-free score ``l`` on the global score ``g``'s scale (``norm``: mean and std of both logs on held-out
    good pictures; see ``FREDetector.score_features``)."""
    z = (norm[0] + norm[1] * (torch.log(local_score) - norm[2]) / norm[3]).clamp(max=MAX_LOG_SCORE)
    return torch.maximum(global_score, torch.exp(z))


def linear_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] matrix R with R @ v == F.interpolate(v, n_out, mode="linear", align_corners=False).

    Bilinear upsampling is separable, so ``R_h @ m @ R_w.T`` equals F.interpolate(..., "bilinear") and
    runs as two small MatMuls in the exported graph: far cheaper on CPU than a generic Interpolate node.
    """
    eye = torch.eye(n_in, dtype=torch.float64)[None]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.float().contiguous()


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


class FREDetector(nn.Module):
    """uint8 NHWC RGB at ``input_size`` (a side, or (height, width)) -> (score [N], anomaly_map [N, H, W])."""

    def __init__(
        self,
        backbone: nn.Module,
        heads: list[FREHead],
        *,
        input_size: int | tuple[int, int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        pool: int = 2,
        blur_sigma: float = 0.0,
        fusion: torch.Tensor | None = None,
        head_inputs: list[tuple[int, int]] | None = None,
        score_heads: int | None = None,
        local: LocalHead | None = None,
        local_input: int | None = None,
        local_norm: torch.Tensor | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)
        self.input_size = input_hw(input_size)  # (height, width)
        self.pool = int(pool)
        # per head: (backbone output it reads, its pooling kernel); by default head i reads output i at ``pool``
        self.head_inputs = [tuple(map(int, t)) for t in head_inputs] if head_inputs is not None else None
        # the first ``score_heads`` heads make the image score, the others the map; None: every head makes both
        self.score_heads = None if score_heads is None else int(score_heads)
        # the position-free score (LocalHead) on backbone output ``local_input``, unpooled; ``local_norm``: mean and
        # std of the global score's log, then of the local one's, on held-out good pictures (see score_features)
        self.local_input = None if local_input is None else int(local_input)
        self.local = local
        self.register_buffer("local_norm", local_norm if local_norm is not None else torch.tensor([0.0, 1.0, 0.0, 1.0]))
        self.blur_sigma = float(blur_sigma)
        std_t = torch.tensor(std, dtype=torch.float32)
        # (x / 255 - mean) / std  ==  x * scale + shift
        self.register_buffer("in_scale", (1.0 / (255.0 * std_t)).view(1, 3, 1, 1))
        self.register_buffer("in_shift", (-torch.tensor(mean) / std_t).view(1, 3, 1, 1))
        self.register_buffer("blur_kernel", gaussian_kernel1d(blur_sigma) if blur_sigma > 0 else torch.ones(1))
        # per layer: score loc, score scale, map loc, map scale (used only with several layers)
        if fusion is None:
            fusion = torch.tensor([[0.0, 1.0, 0.0, 1.0]]).repeat(max(len(heads), 1), 1)
        self.register_buffer("fusion", fusion)
        for i, head in enumerate(self.heads):
            _, h, w = head.shape
            self.register_buffer(f"up_rows{i}", linear_resize_matrix(h, self.input_size[0]), persistent=False)
            self.register_buffer(f"up_cols_t{i}", linear_resize_matrix(w, self.input_size[1]).T.contiguous(),
                                 persistent=False)

    def with_head_form(self, form: str) -> "FREDetector":
        """A detector sharing this one's backbone and buffers, each head in ``form`` (see ``FREHead.in_form``).

        ``self`` is left as it is; with nothing to change, ``self`` is returned.
        """
        heads = [h.in_form(form) for h in self.heads]
        if all(a is b for a, b in zip(heads, self.heads)):
            return self
        other = copy.copy(self)
        # a shallow copy shares the registries; its own dicts keep changes to it (heads, .to(), ...) off self
        other._modules, other._buffers = dict(self._modules), dict(self._buffers)
        other._parameters = dict(self._parameters)
        other._non_persistent_buffers_set = set(self._non_persistent_buffers_set)
        other.heads = nn.ModuleList(heads)
        return other

    # --- pieces -----------------------------------------------------------------------------------
    def normalize(self, images_u8_nhwc: torch.Tensor) -> torch.Tensor:
        x = images_u8_nhwc.permute(0, 3, 1, 2).to(torch.float32)
        return x * self.in_scale + self.in_shift

    def features(self, images_u8_nhwc: torch.Tensor) -> list[torch.Tensor]:
        """Pooled feature tensors [N, C, h, w], one per head (one per layer when every head has its own)."""
        feats = self.backbone(self.normalize(images_u8_nhwc))
        if self.head_inputs is None:
            return [F.avg_pool2d(f, self.pool) for f in feats] if self.pool > 1 else list(feats)
        out = [F.avg_pool2d(feats[i], p) if p > 1 else feats[i] for i, p in self.head_inputs]
        return out if self.local_input is None else out + [feats[self.local_input]]

    def blur(self, amap: torch.Tensor) -> torch.Tensor:
        if self.blur_sigma <= 0:
            return amap
        k = self.blur_kernel
        r = (k.numel() - 1) // 2
        x = F.pad(amap[:, None], (r, r, r, r), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1))
        x = F.conv2d(x, k.view(1, 1, -1, 1))
        return x[:, 0]

    def upsample(self, amap: torch.Tensor, i: int) -> torch.Tensor:
        """Bilinear (align_corners=False) upsampling of layer i's [N, h, w] map to the input size."""
        return getattr(self, f"up_rows{i}") @ amap @ getattr(self, f"up_cols_t{i}")

    def roles(self) -> tuple[list[int], list[int]]:
        """(heads that make the image score, heads that make the map): the first ``score_heads`` make the score,
        and every head adds to the map (the score's coarse map and the map heads' fine ones)."""
        n = len(self.heads)
        return list(range(n if self.score_heads is None else self.score_heads)), list(range(n))

    def global_score_features(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The FRE heads' score and map, before the position-free score (fitting needs them apart)."""
        return self.score_features(feats, with_local=False)

    def score_features(self, feats: list[torch.Tensor], with_local: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Image score and map from each head's features. Where several heads make one output, each is
        normalised by its statistics on good images (``fusion``) and they are added.

        With a position-free head, the image score is ``max(g, exp(mu_g + sigma_g (log l - mu_l) / sigma_l))``:
        the local score ``l`` put on the global score ``g``'s scale by the mean and deviation of both logs on
        held-out good pictures, so whichever is further out among good parts decides. Logs, because both are
        sums of squares with long right tails (on the log scale a good part's local score strays less often,
        so it adds fewer false rejects). The score stays in the global score's units and above 0, and equals
        ``g`` wherever the local score is unremarkable."""
        score, amap = None, None
        by_score, by_map = self.roles()
        for i, (head, f) in enumerate(zip(self.heads, feats)):
            s, m = head(f)
            st = self.fusion[i]
            if i in by_score:
                s = (s - st[0]) / st[1] if len(by_score) > 1 else s
                score = s if score is None else score + s
            if i in by_map:
                m = self.upsample(m, i)
                if len(by_map) > 1:  # the map's own heads: scaled only, so the map stays >= 0 (same ranking)
                    m = m / st[3] if self.score_heads is not None else (m - st[2]) / st[3]
                amap = m if amap is None else amap + m
        if with_local and self.local is not None:
            score = fuse_position_free(score, self.local(feats[len(self.heads)])[0], self.local_norm)
        return score, self.blur(amap)

    def forward(self, images_u8_nhwc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score_features(self.features(images_u8_nhwc))

