"""AttnLRP by LXT 2.1, the oracle of tests/test_lrp_attnlrp.py. Run in a process of its own: LXT
patches torchvision's (and so torch's) LayerNorm, GELU and MultiheadAttention classes and zennit's
hooks globally.

    python tests/oracle/lxt_attnlrp.py layer STATE INPUTS RELEVANCE OUT HEADS
    python tests/oracle/lxt_attnlrp.py vit CONFIG STATE INPUTS TARGETS OUT

`layer`: one nn.MultiheadAttention (batch first, self-attention; its state_dict in STATE), the
relevance RELEVANCE (.npy) at its output handed back to its input (.npy in, OUT .npy) by LXT's
explicit rule functions composed as the layer computes: linear_epsilon for the query, key and
value projections and the output projection, matmul for q kᵀ and A v, softmax (the scale as its
temperature), their epsilons negligible (1e-30).

`vit`: a torchvision VisionTransformer (CONFIG: a JSON of its constructor's keyword arguments)
under LXT's efficient (gradient x input) rules: its torchvision ViT map for LayerNorm and GELU,
zennit's Gamma 0.25 on the conv and 0.05 on linear layers through LXT's zennit patch, and for the
attention LXT's AttnLRP wrapper (`wrap_attention_forward`: the gradient at queries and keys
divided by 4, at values by 2) around an eager attention whose softmax keeps its own gradient (in
this framework the softmax's Taylor rule). The projections inside the attention take the plain
gradient, as in LXT's CP-LRP map (torchvision's attention calls no nn.Linear module there).
OUT: (n, H, W) heatmaps, x * grad summed over colour channels, the target logit's gradient 1.
"""

import json
import sys
from functools import partial

import lxt.explicit.functional as lf
import numpy as np
import torch
import torch.nn.functional as F
from lxt.efficient import monkey_patch, monkey_patch_zennit
from lxt.efficient.models.vit_torch import cp_LRP
from lxt.efficient.patches import patch_method, wrap_attention_forward
from lxt_vit import gamma_heatmaps
from torchvision.models import vision_transformer

TINY = 1e-30


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    n, tokens, width = t.shape
    return t.view(n, tokens, heads, width // heads).transpose(1, 2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    n, heads, tokens, width = t.shape
    return t.transpose(1, 2).reshape(n, tokens, heads * width)


def layer(state: str, inputs: str, relevance: str, out: str, heads: str) -> None:
    weights = torch.load(state, weights_only=True)
    w_in, b_in = weights["in_proj_weight"], weights["in_proj_bias"]
    w_out, b_out = weights["out_proj.weight"], weights["out_proj.bias"]
    x = torch.from_numpy(np.load(inputs)).requires_grad_(True)
    width, heads = x.shape[-1], int(heads)
    parts = [slice(j * width, (j + 1) * width) for j in range(3)]
    q, k, v = (_heads(lf.linear_epsilon(x, w_in[p], b_in[p], TINY), heads) for p in parts)
    logits = lf.matmul(q, k.transpose(-2, -1), epsilon=TINY)
    attention = lf.softmax(logits, -1, temperature=(width // heads) ** 0.5)
    mixed = _merge(lf.matmul(attention, v, epsilon=TINY))
    y = lf.linear_epsilon(mixed, w_out, b_out, TINY)
    (r_in,) = torch.autograd.grad(y, x, torch.from_numpy(np.load(relevance)))
    np.save(out, r_in.numpy())


def _eager_attention(module, query, key, value):
    weights = torch.softmax(query @ key.transpose(-2, -1) / query.shape[-1] ** 0.5, dim=-1)
    return weights @ value


_ATTNLRP_ATTENTION = wrap_attention_forward(_eager_attention)


def attnlrp_attention_forward(self, query, key, value, *args, **kwargs):
    """torchvision's self-attention (batch first, no masks) with LXT's AttnLRP wrapper."""
    width, heads = self.embed_dim, self.num_heads
    q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).split(width, -1)
    mixed = _ATTNLRP_ATTENTION(self, *(_heads(t, heads) for t in (q, k, v)))
    return F.linear(_merge(mixed), self.out_proj.weight, self.out_proj.bias), None


def vit(config: str, state: str, inputs: str, targets: str, out: str) -> None:
    model = vision_transformer.VisionTransformer(**json.loads(config))
    gamma_heatmaps(model, state, inputs, targets, out)


def main(args: list[str]) -> None:
    if args[0] == "layer":
        layer(*args[1:])
        return
    patches = dict(cp_LRP)
    patches[vision_transformer.nn.MultiheadAttention] = partial(
        patch_method, attnlrp_attention_forward
    )
    monkey_patch(vision_transformer, patch_map=patches, verbose=False)
    monkey_patch_zennit(verbose=False)
    vit(*args[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
