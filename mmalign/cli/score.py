"""``mmalign score``: add reward / cost model scores to a dataset as columns."""

from __future__ import annotations

import argparse

from mmalign.cli.common import add_model_flags, add_output_flags, model_kwargs
from mmalign.io import DATASETS_FOLDER, atomic_dir, check_output


def cmd_score(args: argparse.Namespace) -> int:
    from mmalign.data_builders.schema import RecordError
    from mmalign.data_builders.storage import open_dataset
    from mmalign.reward import RewardScorer, load_reward_model

    for flag, value in (("--batch-size", args.batch_size), ("--max-length", args.max_length)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    dataset = open_dataset(args.data)  # read-only: nothing is written into the input folder
    for response in ("prompt", *args.responses):
        if response not in dataset.column_names:
            raise ValueError(f"{args.data}: no column {response!r} to score (columns: {', '.join(dataset.column_names)})")

    inputs = (args.model, args.base, args.data)
    check_output(args.out, replaces=DATASETS_FOLDER, overwrite=args.overwrite, inputs=inputs)  # before loading
    model = load_reward_model(args.model, args.base, aggregation=args.aggregation,
                              uncertainty_weight=args.uncertainty_weight, **model_kwargs(args))
    scorer = RewardScorer(model, batch_size=args.batch_size, max_length=args.max_length)
    columns = []
    for response in args.responses:
        column = f"{args.prefix or model.kind}_{response}"
        try:
            dataset = scorer.score_dataset(dataset, response_column=response, column=column)
        except RecordError as err:
            raise err.located(None, file=args.data) from None
        columns.append(column)
    with atomic_dir(args.out, replaces=DATASETS_FOLDER, overwrite=args.overwrite, inputs=inputs) as tmp:
        dataset.save_to_disk(str(tmp))
    for column in columns:
        values = dataset[column]
        print(f"{column}: mean {sum(values) / max(len(values), 1):.4f} over {len(values)} rows")
    print(f"wrote {len(dataset)} rows with {', '.join(columns)} to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score responses of a dataset with a reward or cost model",
                       description="Run a trained reward or cost model over a datasets folder and save a copy "
                       "with one score column per response column (e.g. reward_chosen, reward_rejected). "
                       "The model reads the scoring prompt it was trained with, facts included. An ensemble "
                       "(train rm --ensemble_size K) also writes each member's score (<column>_members) and "
                       "their spread (<column>_spread).")
    p.add_argument("--model", required=True,
                   help="reward / cost model or ensemble folder (output_dir/final of training)")
    p.add_argument("--base", default=None, help="base checkpoint (default: the one recorded in the model)")
    p.add_argument("--data", required=True, help="datasets folder with prompt, images and response columns")
    p.add_argument("--out", required=True, help="output datasets folder (written atomically)")
    add_output_flags(p)
    p.add_argument("--responses", nargs="+", default=["chosen", "rejected"],
                   help="response columns to score (default: chosen rejected)")
    p.add_argument("--prefix", default=None, help="score column prefix (default: the model kind, reward or cost)")
    p.add_argument("--aggregation", choices=["mean", "worst_case", "uncertainty_weighted"], default=None,
                   help="an ensemble's score: mean, worst_case (min for a reward, max for a cost) or "
                        "uncertainty_weighted (mean -/+ weight * variance) (default: the ensemble's own)")
    p.add_argument("--uncertainty-weight", type=float, default=None,
                   help="λ of uncertainty_weighted (default: the ensemble's own)")
    p.add_argument("--batch-size", type=int, default=8, help="responses scored per forward pass (default: 8)")
    p.add_argument("--max-length", type=int, default=2048, help="longest scoring sequence (default: 2048)")
    add_model_flags(p, what="the base")
    p.set_defaults(func=cmd_score)
