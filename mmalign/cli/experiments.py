"""``mmalign experiments all | dpo | reward-models | ppo | report``: the papers' claims in the scene world."""

from __future__ import annotations

import argparse

# the experiment modules keep their heavy imports inside functions: their arms and defaults are cheap to read
from mmalign.experiments import dpo, grpo, mdpo, overoptimisation, ppo, reward_models
from mmalign.experiments import loop as loop_experiment
from mmalign.experiments.report import run_experiments, write_experiments_report

DESCRIPTION = """\
Reproduce, in the scene world, the qualitative claims of RLHF-V, Fact-RLHF and Safe RLHF-V,
with several seeds at equal data and compute:
  dpo            Dense DPO vs plain DPO on object hallucination; QLoRA vs bf16 / fp32 LoRA
  reward-models  plain RM vs Fact-RM: pairwise accuracy on held-out hallucination pairs
  ppo            PPO with the Fact-RM vs a plain RM (hallucination after PPO);
                 reward-only PPO vs PPO-Lagrangian (unsafe rate, helpfulness)
  grpo           GRPO with the annotations as verifier vs the start policy and Dense DPO
  mdpo           mDPO vs DPO: image reliance, POPE adversarial F1
  loop           on-policy rounds (each round's pairs from the current policy) vs one offline round
  overoptimisation  gold (annotations) vs proxy reward against KL for best-of-n and GRPO:
                 single reward models of two data amounts vs ensembles (mean, worst case, uncertainty)
  report         gather the results under OUT into OUT/report.md with charts and verdicts
  all            every experiment, then the report
Every experiment resumes: finished stages and (seed, arm) results under OUT are reused, and
invocations for different seeds can share OUT. Three seeds of everything take about four
hours on two CPU cores; --quick is a few-minute smoke run of the same code.
"""


def _report(out: str) -> int:
    print(f"report at {write_experiments_report(out)}")
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    print(f"report at {run_experiments(args.out, args.seeds, quick=args.quick)}")
    return 0


def cmd_dpo(args: argparse.Namespace) -> int:
    dpo.run_dpo_experiment(f"{args.out}/dpo", args.seeds, args.methods, dpo.quick_config() if args.quick else None)
    return _report(args.out)


def cmd_reward_models(args: argparse.Namespace) -> int:
    setting = reward_models.quick_setting() if args.quick else reward_models.Setting(epochs=args.epochs)
    reward_models.run_reward_model_experiment(f"{args.out}/reward-models", args.seeds, args.models, setting)
    return _report(args.out)


def cmd_ppo(args: argparse.Namespace) -> int:
    setting = ppo.quick_setting() if args.quick else ppo.Setting(iterations=args.iterations, budget=args.budget,
                                                                 kl_coef=args.kl_coef)
    ppo.run_ppo_experiment(f"{args.out}/ppo", args.seeds, args.arms, setting)
    return _report(args.out)


def cmd_grpo(args: argparse.Namespace) -> int:
    setting = grpo.quick_setting() if args.quick else grpo.Setting(steps=args.steps)
    grpo.run_grpo_experiment(f"{args.out}/grpo", args.seeds, args.arms, setting)
    return _report(args.out)


def cmd_mdpo(args: argparse.Namespace) -> int:
    setting = mdpo.quick_setting() if args.quick else mdpo.Setting()
    mdpo.run_mdpo_experiment(f"{args.out}/mdpo", args.seeds, args.arms, setting)
    return _report(args.out)


def cmd_loop(args: argparse.Namespace) -> int:
    setting = (loop_experiment.quick_setting() if args.quick
               else loop_experiment.Setting(rounds=args.rounds, scenes_per_round=args.scenes_per_round))
    loop_experiment.run_loop_experiment(f"{args.out}/loop", args.seeds, args.arms, setting)
    return _report(args.out)


def cmd_overoptimisation(args: argparse.Namespace) -> int:
    setting = overoptimisation.quick_setting() if args.quick else overoptimisation.Setting(
        rl_iterations=args.rl_iterations)
    overoptimisation.run_overoptimisation_experiment(f"{args.out}/overoptimisation", args.seeds, args.arms, setting,
                                                     rl=not args.no_rl)
    return _report(args.out)


def cmd_report(args: argparse.Namespace) -> int:
    return _report(args.out)


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("experiments", help="reproduce the papers' claims in the scene world (seeds, mean ± std)",
                           description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = group.add_subparsers(dest="experiments_command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, func, seeds: bool = True) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--out", default="runs/experiments",
                       help="experiments folder; each experiment writes OUT/<name> (default: runs/experiments)")
        if seeds:
            p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
            p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the same code, not evidence")
        p.set_defaults(func=func)
        return p

    add("all", "every experiment, then the report", cmd_all)
    p = add("dpo", "Dense DPO vs plain DPO (RLHF-V) and QLoRA vs LoRA, on the demo's pairs and recipe", cmd_dpo)
    p.add_argument("--methods", nargs="+", default=list(dpo.METHODS), choices=list(dpo.METHODS),
                   help="arms to run (default: all)")
    p = add("reward-models", "plain RM vs Fact-RM (Fact-RLHF) pairwise accuracy, and a cost model", cmd_reward_models)
    p.add_argument("--models", nargs="+", default=list(reward_models.DEFAULT_MODELS),
                   choices=list(reward_models.MODELS),
                   help="models per seed (default: rm fact_rm cost; fact_rm_prompt puts the facts before the question)")
    p.add_argument("--epochs", type=float, default=reward_models.Setting.epochs,
                   help=f"epochs per model (default: {reward_models.Setting.epochs:g})")
    p = add("ppo", "PPO with the Fact-RM vs a plain RM; reward-only vs Lagrangian PPO and GRPO (Safe RLHF-V)",
            cmd_ppo)
    p.add_argument("--arms", nargs="+", default=list(ppo.ARMS), choices=list(ppo.ARMS),
                   help="arms to run per seed (default: all)")
    p.add_argument("--iterations", type=int, default=ppo.Setting.iterations,
                   help=f"PPO iterations per run (default: {ppo.Setting.iterations})")
    p.add_argument("--budget", type=float, default=ppo.Setting.budget,
                   help=f"PPO-Lagrangian's cost threshold (default: {ppo.Setting.budget:g})")
    p.add_argument("--kl-coef", type=float, default=ppo.Setting.kl_coef,
                   help=f"β of the per-token KL penalty (default: {ppo.Setting.kl_coef:g})")
    p = add("grpo", "GRPO with the annotations as verifier vs the start policy and Dense DPO", cmd_grpo)
    p.add_argument("--arms", nargs="+", default=list(grpo.ARMS), choices=list(grpo.ARMS),
                   help="arms to run per seed (default: all)")
    p.add_argument("--steps", type=int, default=grpo.Setting.steps,
                   help=f"GRPO iterations of 8 prompts x 4 answers per run (default: {grpo.Setting.steps})")
    p = add("mdpo", "mDPO vs DPO on the same pairs and steps: image reliance, POPE adversarial F1", cmd_mdpo)
    p.add_argument("--arms", nargs="+", default=list(mdpo.ARMS), choices=list(mdpo.ARMS),
                   help="arms to run per seed (default: all)")
    p = add("loop", "on-policy rounds vs one offline round at the same scenes and epochs (RLAIF-V, OPA-DPO)",
            cmd_loop)
    p.add_argument("--arms", nargs="+", default=list(loop_experiment.ARMS), choices=list(loop_experiment.ARMS),
                   help="arms to run per seed (default: all)")
    p.add_argument("--rounds", type=int, default=loop_experiment.Setting.rounds,
                   help=f"rounds of the on-policy arm (default: {loop_experiment.Setting.rounds})")
    p.add_argument("--scenes-per-round", type=int, default=loop_experiment.Setting.scenes_per_round,
                   help=f"feedback scenes per round; the offline arm takes rounds x this at once "
                        f"(default: {loop_experiment.Setting.scenes_per_round})")
    p = add("overoptimisation", "reward over-optimisation against a gold reward (the annotations): best-of-n and "
            "GRPO against single reward models and ensembles (Gao et al.; Coste et al.)", cmd_overoptimisation)
    arms = list(overoptimisation.proxies(overoptimisation.Setting()))
    p.add_argument("--arms", nargs="+", default=arms, choices=arms, help="proxies to run per seed (default: all)")
    p.add_argument("--rl-iterations", type=int, default=overoptimisation.Setting.rl_iterations,
                   help=f"GRPO iterations against each proxy (default: {overoptimisation.Setting.rl_iterations})")
    p.add_argument("--no-rl", action="store_true", help="best-of-n only (no GRPO runs)")
    add("report", "write OUT/report.md (tables, charts, a verdict per claim) from the results under OUT",
        cmd_report, seeds=False)
