"""Round-5/6 probes of ``counterexample`` (issue 15 item 5, development models only; not the library's code path).

    python benchmarks/unlearn_counterexample_probes.py --dataset fashion --cases 0.005:11 0.01:10 0.05:10 \
        --seeds 100 101 102 103 104 --fracs 0.6 0.7 0.8 0.9 1.0 --cache /tmp/ce_cache --out probes.jsonl \
        --variants '{}' '{"head_frac":0.2,"head_anchor":"mixed"}' '{"head_frac":0.2,"head_anchor":"clean"}' '{"mix":0.5}'
    python benchmarks/unlearn_counterexample_probes.py --summarize probes.jsonl

A copy of ``tda_clean.actions.counterexample``'s loop (same random draws: ``{}`` reproduces ``unlearn()`` with
``head_bias=none`` exactly, float32 CPU) with optional changes per variant (JSON): ``bias`` -- a list of head-bias
recalibrations, each recorded (phase ``bias_<mode>``) on a copy of the after-model: ``held_all``/``held_target``
(offsets of all classes / of the target only, on ``held_n`` retained rows the steps never drew, default 1000;
``held_all`` with ``held_n`` = ``head_bias_rows`` is ``unlearn()``'s default), ``anchors_all``/``anchors_target``
(on the distinct drawn rows), ``streamNN`` (the anchors of the last NN% of the steps with the outputs the steps
computed before their update), ``ridge`` an L2 pull of the offsets; ``sp`` -- L2-SP, ``sp * |theta -
theta_before|^2`` added to each step's loss; ``head_frac``/``head_anchor``/``head_lr`` -- the last ``head_frac`` of
the steps train the last linear layer only at ``head_lr`` x the lr, on anchors only (``clean``) or on the full
mixed batch (``mixed``); ``mix`` -- that share of each step's anchors replaced by mixups of two retained rows
(lambda uniform in [0.3, 0.7]) taught the before-model's logits on the mixup; ``val`` -- that share of the anchors
drawn from the validation split. At each ``--fracs`` share of the main phase's steps it records, relative to the
before-model (accuracy) and the clean-data model (attack success), test accuracy and attack success and the
validation accuracy and the validation rows' attack success with the ESTIMATED trigger stamped on (what a
checkpoint choice on the validation split could see). ``--summarize``: mean ± s.d. per variant and case, the
trace over checkpoints, and the test figures of the checkpoint (from 70% of the steps on) with the best validation
accuracy.
"""
import argparse, json, sys, copy, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.poison import _evaluate, scenario
from benchmarks.unlearn_counterexample import _cached_train
from tda_clean.config import unlearn_spec
from tda_clean.actions.counterexample import (estimate_trigger, _stamp, target_class, step_cap, _below_target,
                                              teacher_logits, _adam)
from tda_clean.models.trainer import model_input
from tda_clean.actions.head_bias import fit_offsets, mean_kl, add_to_head_bias

def acc_of(model, X, y):
    with torch.no_grad():
        return float((torch.cat([model(X[i:i+1024]) for i in range(0, len(X), 1024)]).argmax(1) == y).float().mean())

def pred_of(model, X):
    with torch.no_grad():
        return torch.cat([model(X[i:i+1024]) for i in range(0, len(X), 1024)]).argmax(1)

def run(cfg, model_before, X, y, mask, train_config, seed, v, ev, fracs, Xval=None):
    trigger, _ = estimate_trigger(X, mask)
    t_mask, t_values = (np.asarray(a).reshape(-1) for a in trigger)
    model = copy.deepcopy(model_before).float().eval()
    Xt = model_input(X, 'cpu', torch.float32); yt = torch.as_tensor(y, dtype=torch.long)
    tm = torch.as_tensor(t_mask.astype(bool)); tv = torch.as_tensor(t_values, dtype=torch.float32)
    keep = torch.as_tensor(np.flatnonzero(~mask)); forget = torch.as_tensor(np.flatnonzero(mask))
    target = target_class(y, mask)
    with torch.no_grad():
        background = Xt[keep].reshape(len(keep), -1).mean(0)
        teacher_forget = model(_stamp(Xt[forget], tm, background))
        y_forget = teacher_forget.argmax(1)
        teacher_forget = _below_target(teacher_forget, y_forget, target, cfg.target_drop)
    teacher = copy.deepcopy(model).eval()
    params = list(model.parameters())
    lr = cfg.counter_lr or train_config.lr
    opt = _adam(params, lr)
    gen = torch.Generator().manual_seed(seed)
    bs = cfg.batch_size or min(16, train_config.batch_size)
    n_forget_step = min(cfg.stamp or bs, len(forget))
    cap = cfg.counter_steps or step_cap(cfg.counter_budget, train_config.epochs, len(keep), bs + cfg.stamp + n_forget_step)
    draws = keep[torch.randint(0, len(keep), (cap, bs + cfg.stamp), generator=gen)]
    teacher_rows, where = teacher_logits(teacher, Xt, draws)
    mix = v.get('mix', 0.0); nvalanc = int(round(v.get('val', 0.0) * bs))
    nmix = int(round(mix * bs))
    if nmix:   # anchors replaced by mixups of two retained rows (teacher logits up front)
        mg = torch.Generator().manual_seed(seed + 7919)
        a_idx = draws[:, :nmix]
        b_idx = keep[torch.randint(0, len(keep), (cap, nmix), generator=mg)]
        lam = (0.3 + 0.4 * torch.rand(cap, nmix, generator=mg)).view(cap, nmix, *([1] * (Xt.dim() - 1)))
        mixX = lam * Xt[a_idx] + (1 - lam) * Xt[b_idx]
        with torch.no_grad():
            flat = mixX.reshape(cap * nmix, *Xt.shape[1:])
            mixT = torch.cat([teacher(flat[i:i+1024]) for i in range(0, len(flat), 1024)]).view(cap, nmix, -1)
    if nvalanc:
        vg = torch.Generator().manual_seed(seed + 104729)
        vidx = torch.randint(0, len(Xval), (cap, nvalanc), generator=vg)
        with torch.no_grad():
            valT = teacher(Xval)
    w = torch.ones(bs + cfg.stamp + n_forget_step); w[:bs] = cfg.anchor_weight
    p0 = [p.detach().clone() for p in params]
    sp = v.get('sp', 0.0)
    head_frac = v.get('head_frac', 0.0); head_lr = v.get('head_lr', 0.3)
    n_head = int(round(head_frac * cap)) if head_frac else 0
    n_main = cap - n_head
    ext = v.get('extra', 0.0)   # extra steps of the main loop (fraction)
    checkpoints = sorted(set(int(round(f * n_main)) for f in fracs))
    stream_fracs = [int(m[6:]) / 100 for m in v.get('bias', []) if m.startswith('stream')]
    stream_last = int(round(max(stream_fracs, default=0) * n_main)); stream_out, stream_ref = [], []
    out = []
    def record(step, phase):
        model.eval()
        r = {'step': step, 'phase': phase, **ev(model, tm, tv, target)}
        out.append(r); model.train()
    model.train()
    for step in range(n_main):
        idx, sidx = draws[step, :bs], draws[step, bs:]
        fsel = torch.randperm(len(forget), generator=gen)[:n_forget_step]
        xa = Xt[idx]
        clean_out = teacher_rows[where[step]]
        anc = clean_out[:bs]
        if nmix:
            xa = torch.cat([mixX[step], xa[nmix:]]); anc = torch.cat([mixT[step], anc[nmix:]])
        if nvalanc:
            xa = torch.cat([Xval[vidx[step]], xa[nvalanc:]]); anc = torch.cat([valT[vidx[step]], anc[nvalanc:]])
        xb = torch.cat([xa, _stamp(Xt[sidx], tm, tv), Xt[forget[fsel]]])
        opt.zero_grad()
        stamped_out = _below_target(clean_out[bs:], yt[sidx], target, cfg.target_drop)
        out_b = model(xb)
        if step >= n_main - stream_last:   # the anchors' outputs before this step's update (no extra forward)
            stream_out.append(out_b[:bs].detach()); stream_ref.append(anc)
        per_row = (out_b - torch.cat([anc, stamped_out, teacher_forget[fsel]])).pow(2).sum(1)
        loss = (per_row * w).sum() / w.sum()
        loss.backward()
        if sp:
            with torch.no_grad():
                for p, q in zip(params, p0):
                    p.grad.add_(p - q, alpha=2 * sp)
        opt.step()
        if step + 1 in checkpoints:
            record(step + 1, 'main')
    for mode in v.get('bias', []):   # head-bias recalibration, each mode on a copy of the after-model
        model.eval()
        if mode.startswith('stream'):   # 'streamNN': the anchors of the last NN% of the steps, outputs pre-update
            nlast = int(round(int(mode[6:]) / 100 * n_main)) * bs
            aft, ref = torch.cat(stream_out)[-nlast:], torch.cat(stream_ref)[-nlast:]
            rows = torch.arange(len(aft))
            delta = fit_offsets(aft, ref, ridge=v.get('ridge', 0.0))
            saved = copy.deepcopy(model.state_dict()); add_to_head_bias(model, delta)
            out.append({'step': cap, 'phase': 'bias_' + mode, **ev(model, tm, tv, target), 'kl0': mean_kl(aft, ref),
                        'kl1': mean_kl(aft, ref, delta), 'delta_t': float(delta[target]), 'n_rows': len(rows)})
            model.load_state_dict(saved); model.train()
            continue
        rows = torch.unique(draws); ref = teacher_rows   # default: the distinct drawn rows, trigger-free
        if mode.startswith('held'):   # retained rows the steps never drew (none left: the drawn rows, as unlearn())
            drawn = torch.zeros(len(Xt), dtype=torch.bool); drawn[draws.reshape(-1)] = True
            pool = keep[~drawn[keep]]
            if len(pool):
                hg = torch.Generator().manual_seed(seed + 1)
                rows = pool[torch.randperm(len(pool), generator=hg)[:v.get('held_n', 1000)]]
                with torch.no_grad():
                    ref = torch.cat([teacher(Xt[rows[i:i+1024]]) for i in range(0, len(rows), 1024)])
        with torch.no_grad():
            aft = torch.cat([model(Xt[rows[i:i+1024]]) for i in range(0, len(rows), 1024)])
        delta = fit_offsets(aft, ref, [target] if mode.endswith('target') else None, ridge=v.get('ridge', 0.0))
        saved = copy.deepcopy(model.state_dict())
        add_to_head_bias(model, delta)
        r = {'step': cap, 'phase': 'bias_' + mode, **ev(model, tm, tv, target), 'kl0': mean_kl(aft, ref),
             'kl1': mean_kl(aft, ref, delta), 'delta_t': float(delta[target]), 'n_rows': len(rows)}
        out.append(r)
        model.load_state_dict(saved); model.train()
    if n_head:
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        hopt = torch.optim.Adam(head.parameters(), lr=lr * head_lr)
        hanchor = v.get('head_anchor', 'clean')
        for k in range(n_head):
            step = n_main + k
            idx = draws[step, :bs]
            xb = Xt[draws[step]] if hanchor == 'all_clean' else Xt[idx]
            tgt = teacher_rows[where[step]] if hanchor == 'all_clean' else teacher_rows[where[step, :bs]]
            if hanchor == 'mixed':
                sidx = draws[step, bs:]
                fsel = torch.randperm(len(forget), generator=gen)[:n_forget_step]
                xb = torch.cat([Xt[idx], _stamp(Xt[sidx], tm, tv), Xt[forget[fsel]]])
                co = teacher_rows[where[step]]
                tgt = torch.cat([co[:bs], _below_target(co[bs:], yt[sidx], target, cfg.target_drop), teacher_forget[fsel]])
                per_row = (model(xb) - tgt).pow(2).sum(1); loss = (per_row * w).sum() / w.sum()
            else:
                loss = (model(xb) - tgt).pow(2).sum(1).mean()
            hopt.zero_grad(); loss.backward(); hopt.step()
        record(cap, 'head')
    return out

def summarize(paths):
    import collections
    rows = [json.loads(l) for f in paths for l in open(f)]
    g = collections.defaultdict(list)
    for r in rows:
        g[(r['variant'], r['case'], r['phase'], r['step'])].append(r)
    # final per variant/case
    final = collections.defaultdict(list)
    for r in rows:
        final[(r['variant'], r['case'], r['seed'])].append(r)
    byvc = collections.defaultdict(list)
    for (v, c, s), rs in final.items():
        byvc[(v, c)].append(rs)
    for (v, c), runs in sorted(byvc.items()):
        fin = np.array([[100*rs[-1]['asr'], 100*rs[-1]['acc']] for rs in runs])
        ok = sum(1 for rs in runs if rs[-1]['asr'] <= 0.005 and rs[-1]['acc'] >= -0.005)
        line = f"{v:45s} {c:9s} n{len(runs)} ASR-clean {fin[:,0].mean():+.2f}±{fin[:,0].std():.2f} acc {fin[:,1].mean():+.2f}±{fin[:,1].std():.2f} ok {ok}"
        if len(runs[0]) > 1:
            steps = [r['step'] for r in runs[0]]
            tr = np.array([[100*r['acc'] for r in rs] for rs in runs]).mean(0)
            ta = np.array([[100*r['asr'] for r in rs] for rs in runs]).mean(0)
            line += "\n   trace steps " + str(steps) + " acc " + " ".join(f"{x:+.2f}" for x in tr) + " asr " + " ".join(f"{x:+.2f}" for x in ta)
            # selection: max val_acc among checkpoints with val_asr <= min val_asr + 0.01 from 70% on
            sel = []
            for rs in runs:
                cand = [r for r in rs if r['step'] >= 0.69 * steps[-1]]
                best = max(cand, key=lambda r: (r['val_acc'], r['step']))
                sel.append([100*best['asr'], 100*best['acc']])
            sel = np.array(sel)
            line += f"\n   val-selected (>=70%): ASR {sel[:,0].mean():+.2f} (max {sel[:,0].max():+.2f}) acc {sel[:,1].mean():+.2f}±{sel[:,1].std():.2f}"
            corr = [np.corrcoef([r['val_acc'] for r in rs], [r['acc'] for r in rs])[0,1] for rs in runs]
            line += f" corr(val,test) per run {np.nanmean(corr):+.2f}"
        print(line)
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--dataset'); ap.add_argument('--cases', nargs='+'); ap.add_argument('--seeds', type=int, nargs='+')
    ap.add_argument('--variants', nargs='+', default=['{}']); ap.add_argument('--fracs', type=float, nargs='+', default=[1.0])
    ap.add_argument('--spec', default=''); ap.add_argument('--out'); ap.add_argument('--cache', default='/tmp/ce_cache')
    ap.add_argument('--summarize', nargs='+')
    a = ap.parse_args(); torch.set_num_threads(1)
    if a.summarize:
        return summarize(a.summarize)
    fields = dict(kv.split('=', 1) for kv in a.spec.split(',')) if a.spec else {}
    cfg = unlearn_spec(method='counterexample', **fields)
    for case in a.cases:
        rate, cseed = float(case.split(':')[0]), int(case.split(':')[1])
        clean, bundle, model_cfg, train_cfg = scenario(a.dataset, 'patch', rate, cseed)
        tag = f"{a.dataset}_{rate}_{cseed}"
        clean_model, _ = _cached_train(Path(a.cache), f"clean_{tag}", model_cfg, train_cfg, bundle, clean.train.X, clean.train.y, cseed)
        model, _ = _cached_train(Path(a.cache), f"poisoned_{tag}", model_cfg, train_cfg, bundle, bundle.train.X, bundle.train.y, cseed)
        before, cl = _evaluate(model, bundle), _evaluate(clean_model, bundle)
        Xte = model_input(bundle.test.X, 'cpu', torch.float32); yte = torch.as_tensor(bundle.test.y, dtype=torch.long)
        Xtt = model_input(bundle.triggered_test.X, 'cpu', torch.float32)
        Xva = model_input(bundle.val.X, 'cpu', torch.float32); yva = torch.as_tensor(bundle.val.y, dtype=torch.long)
        tgt0 = bundle.attack_target
        before_val = acc_of(model.float(), Xva, yva)
        def ev(m, tm, tv, target):
            nt = yva != target
            pv = pred_of(m, Xva); pte = pred_of(m, Xte)
            return {'acc': float((pte == yte).float().mean()) - before['accuracy'],
                    'asr': float((pred_of(m, Xtt) == tgt0).float().mean()) - cl['attack_success_rate'],
                    'val_acc': float((pv == yva).float().mean()) - before_val,
                    'val_asr': float((pred_of(m, _stamp(Xva[nt], tm, tv)) == target).float().mean()),
                    'test_target_pred': float((pte == tgt0).float().mean()), 'val_target_pred': float((pv == target).float().mean())}
        for vs in a.variants:
            v = json.loads(vs)
            for s in a.seeds:
                t0 = time.perf_counter()
                rows = run(cfg, model, bundle.train.X, bundle.train.y, bundle.corrupted_mask, train_cfg, s, v, ev, a.fracs, Xva)
                for r in rows:
                    r.update(case=case, variant=vs, seed=s, spec=a.spec)
                with open(a.out, 'a') as f:
                    for r in rows: f.write(json.dumps(r) + '\n')
                fin = rows[-1]
                print(f"{case} {vs} s{s}: acc {100*fin['acc']:+.2f} asr {100*fin['asr']:+.2f} val_acc {100*fin['val_acc']:+.2f} ({time.perf_counter()-t0:.1f}s)", flush=True)
if __name__ == '__main__':
    sys.exit(main())
