"""A Vision Transformer that can return every block's attention (the book's ViT chapter).

Parameter names follow timm (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i.attn.qkv``, …), so timm's weights — DINO ViT-B/16 among them — load into it unchanged.

Two attention paths compute the same function:

* the fused path, ``scaled_dot_product_attention``, fast, never forms the (n+1)×(n+1) matrix;
* the explicit path, ``softmax(Q Kᵀ / √d_head) V``, taken only when attention is requested.

Per block: ``X = X + MSA(LN(X))``, ``X = X + MLP(LN(X))`` (Dosovitskiy et al., ICLR 2021).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Multi-head self-attention.

    Args:
        dim: token width D; heads: number of heads H (D must divide by H).
    Shapes: x (B, N, D) → (B, N, D); attention (B, H, N, N), rows sum to 1.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if return_attention:
            attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)  # (B, H, N, N)
            out = attn @ v
        else:
            attn = None
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))
        return (out, attn) if return_attention else out


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True)
        else:
            y, attn = self.attn(self.norm1(x)), None
        x = x + y
        x = x + self.mlp(self.norm2(x))
        return (x, attn) if return_attention else x


class PatchEmbed(nn.Module):
    """Cut the image into p×p patches and project each to D: (B, 3, H, W) → (B, n, D), n =
    (H/p)(W/p)."""

    def __init__(self, img_size: int, patch_size: int, dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
        self.img_size, self.patch_size = img_size, patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected {self.img_size}×{self.img_size} images, got {tuple(x.shape[-2:])}: load "
                f"them at this size (image_size={self.img_size} in get_dataset or "
                "load_folder_domains)"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT with a CLS token; the CLS output after the final LayerNorm is the image feature.

    Args:
        img_size, patch_size: input side and patch side in pixels.
        dim: width D; depth: blocks L; heads: heads H per block.
        out_dim: when given, a linear map of the CLS output to ``out_dim`` is the feature (the
            distilled ViT learns it to match its teacher's feature space); attention is unaffected.
    """

    def __init__(
        self,
        img_size: int = 64,
        patch_size: int = 8,
        dim: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        out_dim: int | None = None,
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, out_dim) if out_dim else None
        self.num_features = out_dim or dim
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings before the CLS token and position embeddings: (B, 3, H, W) → (B, n, D).

        IBNM mixes two images at this point.
        """
        return self.patch_embed(x)

    def forward_tokens(self, tokens: torch.Tensor, return_attention: bool = False):
        """Prepend CLS, add position embeddings, run the blocks.

        Returns the normalised tokens (B, n+1, D), and with ``return_attention`` also the list of
        L attention tensors (B, H, n+1, n+1).
        """
        x = (
            torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
            + self.pos_embed
        )
        attns = []
        for blk in self.blocks:
            if return_attention:
                x, a = blk(x, return_attention=True)
                attns.append(a)
            else:
                x = blk(x)
        x = self.norm(x)
        return (x, attns) if return_attention else x

    def forward_features(self, x: torch.Tensor, return_attention: bool = False):
        return self.forward_tokens(self.patch_tokens(x), return_attention)

    def feature_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image feature from patch embeddings (B, n, D): what :meth:`forward` returns for an
        image."""
        cls = self.forward_tokens(tokens)[:, 0]
        return self.proj(cls) if self.proj is not None else cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS feature, (B, D) — or (B, out_dim) through ``proj`` when the model has one."""
        return self.feature_from_tokens(self.patch_tokens(x))

    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """All blocks' attention stacked: (B, L, H, n+1, n+1)."""
        _, attns = self.forward_features(x, return_attention=True)
        return torch.stack(attns, dim=1)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
