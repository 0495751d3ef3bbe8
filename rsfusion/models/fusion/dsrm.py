"""SegRGB-X's domain-specific refinement module (DSRM), arXiv 2603.28023 Sec. III-D, eq. (2)-(7).

Structure (h) of the paper's Fig. 6 (best in Tab. IV): a channel
attention whose query comes from learnable universal prompts U, then a spatial multi-head
cross-attention whose query comes from the MA-CLIP embedding S, then a residual. One DSRM
(shared weights) is called on (F4^r, S^r) and on (F4^m, S^m) ("Aligned", Tab. VIII; Fig. 4:
"two identical DSRM blocks with shared weights"); the pairing is the caller's.

The paper gives no code and leaves shapes open. Every choice made here, with the sentence it
rests on ([txt] paper, [inf] inferred; C channels, N = H * W, K prompts, E embedding width,
g the prompt grid side)::

 1. U is (K, D) with D = C * g * g: each prompt is a (C, g, g) map. The selected prompt chi.U
    is reshaped to (C, g, g) and resized (bilinear, align_corners=False) to (H, W), so Q_c is
    C x N at any size. [txt] "a collection of K feature vectors U in R^{K x D}" and eq. (4)
    "Q_c, K_c, V_c, F_c in B x C x N" (a pooled vector alone cannot give N query columns).
    At g = 1 the query is constant over N and the cosine logits below collapse (every query
    row is +-1/sqrt(N)), so use g >= 2; at (H, W) == (g, g) no resizing happens. [inf]
 2. chi = Softmax_K(MLP(GAP(F))), MLP = Linear(C, C) -> GELU -> Linear(C, K); Q_c =
    W_c^Q(chi.U). [txt] "GAP ... followed by an MLP ... normalized via a softmax operation",
    "The binary restriction of chi is loosened and extended to a percentage as soft
    constraints", "A dot product ... between the transformed features and the universal
    prompt". Hidden width C and GELU. [inf]
 3. The channel attention is transposed attention (as Restormer's MDTA): tokens are the C
    channels, their features the N positions. Q_c and K_c are L2-normalised along N, so the
    logits are cosine similarities, scaled by a learnable per-head temperature (init 1);
    heads split the channels into C / heads groups; softmax over the key channels; F_c =
    A V_c (B, C, N). [txt] eq. (4) shapes, and "the input features F are reweighted by the
    cosine similarity with the selected modality features chi.U". W_c^{Q,K,V}: bias-free
    1x1 convolutions. [inf] No output projection after it: eq. (6) applies W_s^K, W_s^V to
    F_c directly (one there would compose with them). [txt]
 4. Q_s = W_s^Q Reshape(MLP(S)): MLP = Linear(E, C) -> GELU -> Linear(C, C * g * g),
    reshaped to a (C, g, g) grid and resized to (H, W) like U, giving N query tokens. [txt]
    eq. (5), eq. (7) "Q_s, K_s, V_s, F_s in B x N x C", and "(S) are first transformed
    through an MLP layer to align with the required dimensionality". The queries depend on S
    and the position only; F reaches the output through keys and values (roles kept). [inf]
 5. F_s = MHCA(Q_s, K_s, V_s): scaled dot-product, heads split C, softmax over the N keys;
    W_s^{Q,K,V} bias-free Linear(C, C) on tokens. [txt] eq. (6)-(7). [inf] bias-free. On a
    1 x 1 map there is one key, so S has no effect there (its branch gets no gradient).
 6. out = F + W_o F_s with W_o = Linear(C, C) zero-initialised (weight and bias): the module
    starts as the exact identity, so inserting it does not perturb a pre-trained backbone;
    W_o gets a gradient on the first step, everything else from the second. [inf] The
    paper says "residual" and names no output projection or normalisation (none is used).
 7. The bias-free W^Q are applied on the g x g grid before resizing; bilinear resizing is
    linear per channel, so this equals resizing first. [inf]

Defaults: ``num_heads=8`` as MiT's (and CMX's FFM's) stage-4 heads; ``num_prompts=16`` and
``grid_size=4`` are not given by the paper (a 512 crop gives a 16 x 16 stage-4 map: each
query cell then spans 4 x 4 positions). [inf]

Parameters (G = g * g, h heads): ``(8 + G)C^2 + (E + K + KG + G + 3)C + K + h``, see
:meth:`DSRM.num_parameters`. For example C = 256, E = 512 (a CLIP ViT-B embedding) and the
defaults: 1,778,456.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DSRM"]


def _resize(grid: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(grid.shape[-2:]) == size:
        return grid
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)


class DSRM(nn.Module):
    """Domain-specific refinement module, SegRGB-X eq. (2)-(7), Fig. 6 (h).

    On a stage-4 map ``feature`` F (B, C, H, W) and its MA-CLIP embedding S (B, E)::

        chi  = softmax_K(MLP(GAP(F)))                       (B, K)          eq. 2
        Q_c  = resize(W_c^Q reshape(chi . U)) (B, C, N);  K_c, V_c = W_c^K F, W_c^V F
        F_c  = softmax_keys(tau * cos(Q_c, K_c)) V_c         per head, C x C   eq. 3-4
        Q_s  = W_s^Q resize(reshape(MLP(S))) (B, N, C);  K_s, V_s = W_s^K F_c, W_s^V F_c
        F_s  = softmax_keys(Q_s K_s^T / sqrt(d)) V_s         per head, N x N   eq. 5-7
        out  = F + W_o F_s                                   (W_o zero at init)

    The module docstring lists each shape choice and the paper sentence it rests on.

    Args:
        dim: channels C of the feature map.
        embed_dim: width E of the MA-CLIP embedding.
        num_prompts: number K of universal prompts.
        num_heads: heads of both attentions; must divide ``dim``.
        grid_size: side g of the prompt and query grids (D = C * g * g); >= 2 advised.

    Example:
        >>> import torch
        >>> dsrm = DSRM(16, embed_dim=12, num_prompts=4, num_heads=2)
        >>> f = torch.randn(2, 16, 17, 23)
        >>> out = dsrm(f, torch.randn(2, 12))
        >>> out.shape, torch.equal(out, f)  # the exact identity at init
        (torch.Size([2, 16, 17, 23]), True)
    """

    def __init__(
        self,
        dim: int,
        embed_dim: int,
        num_prompts: int = 16,
        num_heads: int = 8,
        grid_size: int = 4,
    ) -> None:
        super().__init__()
        if min(dim, embed_dim, num_prompts, num_heads, grid_size) < 1 or dim % num_heads:
            raise ValueError(
                f"DSRM needs positive sizes and num_heads dividing dim, got dim={dim}, "
                f"embed_dim={embed_dim}, num_prompts={num_prompts}, num_heads={num_heads}, "
                f"grid_size={grid_size}"
            )
        self.dim, self.embed_dim, self.num_heads = dim, embed_dim, num_heads
        self.num_prompts, self.grid_size = num_prompts, grid_size
        g2 = grid_size * grid_size
        # Eq. (2)-(4): channel attention, query from the universal prompts U.
        self.prompt_mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, num_prompts))
        self.prompts = nn.Parameter(torch.randn(num_prompts, dim, grid_size, grid_size))  # U
        self.q_c = nn.Conv2d(dim, dim, 1, bias=False)
        self.k_c = nn.Conv2d(dim, dim, 1, bias=False)
        self.v_c = nn.Conv2d(dim, dim, 1, bias=False)
        self.temperature = nn.Parameter(torch.ones(num_heads))
        # Eq. (5)-(7): spatial cross-attention, query from the MA-CLIP embedding S.
        self.embed_mlp = nn.Sequential(
            nn.Linear(embed_dim, dim), nn.GELU(), nn.Linear(dim, dim * g2)
        )
        self.q_s = nn.Linear(dim, dim, bias=False)
        self.k_s = nn.Linear(dim, dim, bias=False)
        self.v_s = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def num_parameters(
        dim: int, embed_dim: int, num_prompts: int = 16, num_heads: int = 8, grid_size: int = 4
    ) -> int:
        """``(8 + G)C^2 + (E + K + KG + G + 3)C + K + h`` with ``G = g * g``.

        Prompt MLP ``C^2 + C + CK + K``; U ``KCG``; W_c^{Q,K,V} ``3C^2``; temperature ``h``;
        embedding MLP ``EC + C + GC^2 + GC``; W_s^{Q,K,V} ``3C^2``; W_o ``C^2 + C``.
        """
        c, k, g2 = dim, num_prompts, grid_size * grid_size
        return (8 + g2) * c * c + (embed_dim + k + k * g2 + g2 + 3) * c + k + num_heads

    def prompt_weights(self, feature: Tensor) -> Tensor:
        """The soft indicator ``chi = Softmax(MLP(GAP(F)))`` (B, K) of eq. (2)."""
        return torch.softmax(self.prompt_mlp(feature.mean(dim=(2, 3))), dim=-1)

    def channel_attention(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """``(F_c, A_c)`` of eq. (2)-(4): F_c (B, C, H, W), A_c (B, heads, C/h, C/h)."""
        b, c, h, w = feature.shape
        prompt = torch.einsum("bk,kcij->bcij", self.prompt_weights(feature), self.prompts)
        q = _resize(self.q_c(prompt), (h, w))

        def heads(t: Tensor) -> Tensor:
            return t.reshape(b, self.num_heads, c // self.num_heads, h * w)

        q = F.normalize(heads(q), dim=-1)
        k = F.normalize(heads(self.k_c(feature)), dim=-1)
        logits = q @ k.transpose(-2, -1) * self.temperature.view(1, -1, 1, 1)
        attn = torch.softmax(logits, dim=-1)
        return (attn @ heads(self.v_c(feature))).reshape(b, c, h, w), attn

    def spatial_queries(self, embedding: Tensor, size: tuple[int, int]) -> Tensor:
        """``Q_s = W_s^Q Reshape(MLP(S))`` of eq. (5), resized to ``size``: (B, N, C)."""
        b, g = embedding.shape[0], self.grid_size
        grid = self.embed_mlp(embedding).reshape(b, self.dim, g, g)
        grid = self.q_s(grid.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return _resize(grid, size).flatten(2).transpose(1, 2)

    def spatial_attention(self, f_c: Tensor, embedding: Tensor) -> Tensor:
        """``F_s`` (B, N, C) of eq. (5)-(7): S-derived queries over the tokens of F_c."""
        b, c, h, w = f_c.shape
        tokens = f_c.flatten(2).transpose(1, 2)

        def heads(t: Tensor) -> Tensor:
            return t.reshape(b, h * w, self.num_heads, -1).transpose(1, 2)

        q = heads(self.spatial_queries(embedding, (h, w)))
        k, v = heads(self.k_s(tokens)), heads(self.v_s(tokens))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax over the N keys
        return out.transpose(1, 2).reshape(b, h * w, c)

    def forward(self, feature: Tensor, embedding: Tensor) -> Tensor:
        """The refined map (B, C, H, W): ``F + W_o F_s``."""
        if feature.ndim != 4 or feature.shape[1] != self.dim:
            raise ValueError(f"expected feature (B, {self.dim}, H, W), got {tuple(feature.shape)}")
        if embedding.shape != (feature.shape[0], self.embed_dim):
            raise ValueError(
                f"expected embedding ({feature.shape[0]}, {self.embed_dim}), got "
                f"{tuple(embedding.shape)}"
            )
        b, c, h, w = feature.shape
        f_c, _ = self.channel_attention(feature)
        f_s = self.out(self.spatial_attention(f_c, embedding))
        return feature + f_s.transpose(1, 2).reshape(b, c, h, w)
