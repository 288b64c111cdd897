"""The attention-returning ViT: explicit path = fused path = timm, on the same weights."""
import pytest
import torch

from cdrlib.models import Attention, VisionTransformer, build_backbone

timm = pytest.importorskip("timm")


def timm_and_ours(img=32, patch=8, dim=48, depth=3, heads=4):
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=2.0,
        num_classes=0, global_pool="token", qkv_bias=True).eval()
    ours = VisionTransformer(img_size=img, patch_size=patch, dim=dim, depth=depth, heads=heads, mlp_ratio=2.0).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def test_timm_weights_load_and_outputs_match():
    torch.manual_seed(0)
    ref, ours = timm_and_ours()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = ref.forward_features(x)
        fused = ours.forward_features(x)
        explicit, attns = ours.forward_features(x, return_attention=True)
        feat = ours(x)
    torch.testing.assert_close(fused, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feat, ref(x), atol=1e-5, rtol=1e-5)  # the CLS feature, timm's pooled output
    assert len(attns) == 3 and attns[0].shape == (3, 4, 17, 17)


def test_attention_equals_timm_attention_and_the_equation():
    torch.manual_seed(1)
    ref = timm.models.vision_transformer.Attention(dim=32, num_heads=4, qkv_bias=True).eval()
    ours = Attention(32, 4).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        out, attn = ours(x, return_attention=True)
        torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
        # softmax(Q Kᵀ / sqrt(d_head)) by hand, head by head
        qkv = x @ ref.qkv.weight.T + ref.qkv.bias
        q, k, _ = qkv.split(32, dim=-1)
        for h in range(4):
            sl = slice(8 * h, 8 * h + 8)
            a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 8 ** 0.5, dim=-1)
            torch.testing.assert_close(attn[:, h], a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, 10))


def test_attention_maps_shape_and_patch_mixing_hooks():
    vit = build_backbone("vit").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = vit.attention_maps(x)
        tokens = vit.patch_tokens(x)
        assert torch.allclose(vit.forward_tokens(tokens)[:, 0], vit(x), atol=1e-6)
    assert maps.shape == (2, 6, 3, 65, 65)
    assert tokens.shape == (2, 64, 192)


def test_bad_input_shapes():
    vit = build_backbone("vit")
    with pytest.raises(ValueError, match="expected 64×64 images"):
        vit(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        Attention(10, 3)


def test_cls_patch_attention_against_loops():
    from cdrlib.fusion import cls_patch_attention

    torch.manual_seed(2)
    attn = torch.rand(2, 3, 4, 5, 5).softmax(-1)  # B=2, L=3, H=4, n=4 patches
    got_raw = cls_patch_attention(attn, softmax=False)
    got = cls_patch_attention(attn)
    for b in range(2):
        for i in range(4):
            total = 0.0
            for layer in range(3):
                total += sum(attn[b, layer, h, 0, 1 + i].item() for h in range(4)) / 4
            assert got_raw[b, i].item() == pytest.approx(total / 3, abs=1e-6)
        assert torch.allclose(got[b], torch.softmax(got_raw[b], 0))
    with pytest.raises(ValueError, match="expected attentions"):
        cls_patch_attention(attn[0])
