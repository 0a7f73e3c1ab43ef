"""`ruv adapt [ROLE ...]`: learning from use with no daemon. Evaluates `adaptation_sensor` (each
captured role with at least `adapt.min_requests` new requests in its traffic log), runs the updates
it asks for in this process, then `promotion_sensor` for those that passed their guard, as the
daemon would. `--status` prints, per role, its traffic and what its last update measured.
"""

from __future__ import annotations

import os

from ruv_assets.cli import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("adapt", help="update roles on their new traffic (behind the guard) and promote what passed")
    parser.add_argument("roles", nargs="*", help="only these roles (default: every role with enough new traffic)")
    parser.add_argument("--status", action="store_true", help="what each role's traffic holds and what its last update did")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from dagster import DagsterInstance

    from ruv_assets.catalogue.catalogue import current_catalogue
    from ruv_assets.orchestration.build_all import BuildReport, adapt, runner

    catalogue = current_catalogue()
    unknown = [r for r in args.roles if r not in catalogue.adapter_names]
    if unknown:
        raise UserError(f"unknown role {', '.join(map(repr, unknown))}; the catalogue's adapters: {', '.join(catalogue.adapter_names)}")
    if not os.environ.get("DAGSTER_HOME"):
        raise UserError("DAGSTER_HOME is not set: export DAGSTER_HOME=$PWD/dagster_home (or .demo/dagster_home after make demo)")
    with DagsterInstance.get() as instance:
        if args.status:
            print_status(instance, catalogue, args.roles or catalogue.adapter_names)
            return 0
        report = BuildReport()
        ran = adapt(instance, runner(instance, report, print), print, roles=args.roles or None)
    if not ran:
        print("no update to run")
    if report.failed:
        raise UserError("failed: " + ", ".join(f"{job}[{part}]" for job, part in report.failed))
    return 0


def print_status(instance, catalogue, roles) -> None:
    from ruv_resources import traffic_log
    from ruv_resources.store import default_root
    from ruv_assets.assets.adapted import last_update
    from ruv_assets.realmodel.adaptation import count_new

    for name in roles:
        entry = catalogue.adapter(name)
        if entry.capture is None:
            print(f"{name}: not a captured role (no teacher to learn from)")
            continue
        path = traffic_log.log_path(default_root(), name)
        last = last_update(instance, name)
        new = count_new(path, int(last.get("traffic_end") or 0))
        state = "on" if entry.capture.adapt.enabled else "off (capture.adapt.enabled: false)"
        print(f"{name}: adapt {state}; {len(traffic_log.read(path).records)} requests logged, {new} new for training "
              f"(updates at {entry.capture.adapt.min_requests})")
        if last:
            print(f"  last update: {'published' if last.get('published') else 'kept back'}, held-out traffic KL "
                  f"{last.get('heldout_traffic_kl_live', float('nan')):.4f} -> {last.get('heldout_traffic_kl', float('nan')):.4f}, "
                  f"corpus KL {last.get('corpus_kl_live', float('nan')):.4f} -> {last.get('corpus_kl', float('nan')):.4f}, "
                  f"{last.get('requests_trained', 0)} requests in {last.get('update_seconds', 0)} s")
