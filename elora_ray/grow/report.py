"""``grow/report.md``: what the last grow added, removed, placed where and recomputed."""

from __future__ import annotations


def render_grow_report(rec: dict) -> str:
    lines = [f"# Grow {rec['generation']}: {len(rec['added'])} task(s) added, {len(rec['removed'])} removed", ""]
    if rec["added"]:
        lines.append(f"Added: {', '.join(rec['added'])}.")
    if rec["removed"]:
        lines.append(f"Removed: {', '.join(rec['removed'])}.")
    lines += ["", "## Placement", "", "| task | group | new group | affinity to each group | rule |", "|---|---:|---|---|---|"]
    for p in rec["placements"]:
        aff = ", ".join(f"{a:.3g}" for a in p["affinity_to_groups"])
        lines.append(f"| {p['task']} | {p['group']} | {'yes' if p['new_group'] else 'no'} | {aff} | {p['rule']} |")
    lines += ["", "## Groups", "", "| group | tasks | retrained |", "|---:|---|---|"]
    for k, tasks in enumerate(rec["groups"]):
        lines.append(f"| {k} | {', '.join(tasks)} | {'yes' if k in rec['changed_groups'] else 'no'} |")
    lines += ["", "## What was recomputed", "",
              f"- adapters trained: {', '.join(rec['retrained']) or 'none'}",
              f"- kept adapters run on the added tasks: {', '.join(o['job'] for o in rec['outputs_extended']) or 'none'}",
              f"- combination weights refitted: {', '.join(rec['weights_refit']) or 'none'}; kept: "
              f"{', '.join(rec['weights_kept']) or 'none'}",
              "- every other adapter, feature shard and sample of the kept tasks: reused as they were", "",
              "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in rec["step_seconds"].items()]
    lines += [f"| **total** | **{rec['seconds']:.1f}** |", "", f"## Ensemble accuracy ({rec['evaluation']['split']})", "",
              f"Average {rec['evaluation']['avg_accuracy']:.4f}.", "", "| task | accuracy |", "|---|---:|"]
    lines += [f"| {t}{' (added)' if t in rec['added'] else ''} | {a:.4f} |" for t, a in rec["evaluation"]["per_task"].items()]
    return "\n".join(lines) + "\n"
