#!/usr/bin/env python3
"""Training-step throughput of the dirmoe model written in eager PyTorch.

The same decoder as dirmoe (pre-layer-norm GPT-2 blocks, learned positions,
tied LM head, every FFN an MoE layer of d_model -> d_ff -> d_model experts
with tanh GELU) and the same training step (cross-entropy plus router
losses, backward, global gradient-norm clipping, AdamW with decay on
matrices only). Experts run in a Python loop over the experts that gathers
each expert's tokens by index, as common eager MoE code does. Routers:
top-k (softmax, keep k, renormalise, Switch load-balancing loss) and DirMoE
(Gumbel-Sigmoid selection with a hard mask and straight-through gradient,
Dirichlet weights from reparameterised Gamma draws, KL_B, KL_D and the
sparsity term).

It measures speed only: the data are uniform random bytes, as in
`dirmoe bench` without --data. Prints one JSON object with --json.
"""
import argparse
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def solve_p0(n_expert, k):
    """Root of E p + (1 - p)^E = k in [0, 1] by bisection, clamped like dirmoe."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if n_expert * mid + (1.0 - mid) ** n_expert < k:
            lo = mid
        else:
            hi = mid
    return min(max(0.5 * (lo + hi), 1e-6), 1.0 - 1e-6)


class Attention(nn.Module):
    def __init__(self, d_model, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        shape = (b, t, self.n_head, c // self.n_head)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Expert(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.fc = nn.Linear(d_model, d_ff)
        self.proj = nn.Linear(d_ff, d_model)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class MoE(nn.Module):
    """MoE layer; forward returns (output, auxiliary loss, mean active experts)."""

    def __init__(self, args):
        super().__init__()
        self.args = args
        e = args.experts
        self.router = nn.Linear(args.d_model, 2 * e if args.router == "dirmoe" else e)
        self.experts = nn.ModuleList(Expert(args.d_model, args.d_ff) for _ in range(e))
        if args.router == "dirmoe":
            with torch.no_grad():
                self.router.bias[:e].fill_(math.log(args.select_init / (1.0 - args.select_init)))
                self.router.bias[e:].zero_()

    def route_topk(self, logits):
        a = self.args
        probs = logits.softmax(dim=-1)
        top_p, top_i = probs.topk(a.k, dim=-1)
        weights = torch.zeros_like(probs).scatter(1, top_i, top_p / top_p.sum(-1, keepdim=True))
        mask = weights > 0
        f = mask.float().mean(0) / a.k
        aux = a.aux_loss * a.experts * (f * probs.mean(0)).sum()
        return mask, weights, aux

    def route_dirmoe(self, logits):
        a = self.args
        e = a.experts
        s, c = logits[:, :e], logits[:, e:]

        # Selection: logistic noise, relaxed gate, hard mask with at least one expert.
        u = torch.rand_like(s).clamp(1e-7, 1 - 1e-7)
        score = s + (torch.log(u) - torch.log1p(-u))
        zt = torch.sigmoid(score / a.tau)
        mask = score > 0
        none = ~mask.any(dim=1)
        if none.any():
            mask[none] = F.one_hot(score[none].argmax(dim=1), e).bool()

        # Dirichlet weights: softmax over the selected experts of log g, g ~ Gamma(alpha),
        # whose gradient is the implicit reparameterisation gradient. The straight-through
        # term zt - zt.detach() routes dL/dm to s through zt.
        alpha = (F.softplus(c) + a.alpha_min).clamp(max=a.alpha_max)
        log_g = torch.log(torch._standard_gamma(alpha).clamp_min(1e-30))
        logit_w = (log_g + (zt - zt.detach())).masked_fill(~mask, float("-inf"))
        weights = logit_w.softmax(dim=1)

        # Regularisers: batch Bernoulli KL, Dirichlet KL, sparsity on Kbar.
        p0 = a.p0
        pibar = torch.sigmoid(s).mean(0)
        qbar = torch.sigmoid(-s).mean(0)
        kl_b = (pibar * (pibar.log() - math.log(p0)) + qbar * (qbar.log() - math.log1p(-p0))).sum()
        a_sum = alpha.sum(1)
        kl_d = (torch.lgamma(a_sum) - torch.lgamma(alpha).sum(1) - math.lgamma(e * a.alpha0)
                + e * math.lgamma(a.alpha0)
                + ((alpha - a.alpha0) * (torch.digamma(alpha) - torch.digamma(a_sum)[:, None])).sum(1)).mean()
        kbar = (torch.sigmoid(s).sum(1) + torch.exp(-F.softplus(s).sum(1))).mean()
        aux = a.beta_b * kl_b + a.beta_d * kl_d + a.lambda_s * (kbar - a.k) ** 2
        return mask, weights, aux

    def forward(self, x):
        b, t, c = x.shape
        flat = x.reshape(-1, c)
        logits = self.router(flat)
        route = self.route_dirmoe if self.args.router == "dirmoe" else self.route_topk
        mask, weights, aux = route(logits)

        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            idx = mask[:, e].nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            y = expert(flat.index_select(0, idx)) * weights.index_select(0, idx)[:, e:e + 1]
            out.index_add_(0, idx, y)
        return out.view(b, t, c), aux, mask.sum(1).float().mean().item()


class Block(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.ln1 = nn.LayerNorm(args.d_model)
        self.attn = Attention(args.d_model, args.heads)
        self.ln2 = nn.LayerNorm(args.d_model)
        self.moe = MoE(args)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        y, aux, active = self.moe(self.ln2(x))
        return x + y, aux, active


class Model(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.wte = nn.Embedding(256, args.d_model)
        self.wpe = nn.Embedding(args.seq_len, args.d_model)
        self.blocks = nn.ModuleList(Block(args) for _ in range(args.layers))
        self.lnf = nn.LayerNorm(args.d_model)
        for name, p in self.named_parameters():
            if p.dim() == 2 and "router" not in name:
                nn.init.normal_(p, std=0.02)
            if name.endswith("proj.weight"):
                with torch.no_grad():
                    p.mul_(1.0 / math.sqrt(2 * args.layers))

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        aux_total, active = 0.0, []
        for blk in self.blocks:
            x, aux, act = blk(x)
            aux_total = aux_total + aux
            active.append(act)
        logits = self.lnf(x) @ self.wte.weight.t()
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return ce + aux_total, sum(active) / len(active)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--router", choices=["dirmoe", "topk"], default="dirmoe")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=512)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--k", type=float, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--select-init", type=float, default=0.5,
                    help="dirmoe: initial selection probability (the prior p0 starts at the target count)")
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--timed-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
                    help="torch.set_num_threads (default: OMP_NUM_THREADS, else PyTorch's choice)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.k = int(args.k) if args.router == "topk" else args.k
    args.tau, args.alpha_min, args.alpha_max, args.alpha0 = 1.0, 1e-2, 1e4, 1.0
    args.beta_b, args.beta_d, args.lambda_s, args.aux_loss = 0.01, 0.001, 0.1, 0.01
    args.p0 = solve_p0(args.experts, args.k)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = Model(args)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)

    elapsed, active_sum, loss = 0.0, 0.0, float("nan")
    for step in range(args.warmup_steps + args.timed_steps):
        data = torch.randint(0, 256, (args.batch, args.seq_len + 1))
        t0 = time.perf_counter()
        loss_t, active = model(data[:, :-1], data[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = loss_t.item()
        dt = time.perf_counter() - t0
        if step >= args.warmup_steps:
            elapsed += dt
            active_sum += active

    tokens = args.batch * args.seq_len * args.timed_steps
    result = {
        "implementation": "pytorch-eager",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "router": args.router,
        "tokens_per_s": tokens / elapsed,
        "step_seconds": elapsed / args.timed_steps,
        "active_experts": active_sum / args.timed_steps,
        "last_loss": loss,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"pytorch {torch.__version__} ({result['threads']} threads), router {args.router}: "
              f"{result['tokens_per_s']:.0f} tokens/s ({1e3 * result['step_seconds']:.1f} ms per step), "
              f"active experts {result['active_experts']:.3f}, last loss {loss:.4f}")


if __name__ == "__main__":
    main()
