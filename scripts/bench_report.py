#!/usr/bin/env python3
"""Prints the table of a scripts/bench.sh run from its results directory.

    scripts/bench_report.py .stack/bench/<ts>

Reads the directory's `manifest` (facts as key=value lines, one
`run=NAME|LABEL|TOPIC|MESSAGES|DATABASE` line per measured run) and each run's
raw outputs: NAME.out (conscope's `summary:` line, or the Python consumer's
final JSON line), NAME.time (/usr/bin/time -v, when it was available).
Computes the ratios from those figures only. Standard library only.

Exits 1 when a run's output cannot be parsed, 3 when a run did not process
exactly the messages its topic holds (the table is printed first).
"""

import json
import re
import sys
from pathlib import Path


def read_manifest(path):
    facts, runs = {}, []
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "run":
            name, label, topic, messages, database = value.split("|")
            runs.append(dict(name=name, label=label, topic=topic,
                             messages=int(messages), database=database))
        else:
            facts[key] = value
    return facts, runs


def parse_time(path):
    """Max RSS (KiB) and CPU seconds (user + system) from /usr/bin/time -v."""
    if not path.exists():
        return None, None
    text = path.read_text()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    system = re.search(r"System time \(seconds\): ([\d.]+)", text)
    cpu = float(user.group(1)) + float(system.group(1)) if user and system else None
    return (int(rss.group(1)) if rss else None), cpu


def kib(text):
    """'12345kB' -> 12345."""
    match = re.fullmatch(r"(\d+)kB", text or "")
    return int(match.group(1)) if match else None


def parse_conscope(run, results):
    line = next((l for l in reversed((results / f"{run['name']}.out").read_text().splitlines())
                 if l.startswith("summary: ")), None)
    if line is None:
        raise ValueError(f"{run['name']}: no summary line")
    fields = dict(re.findall(r"([a-z_0-9]+)=(\S+)", line.replace("[", " ").replace("]", " ")))
    run.update(
        processed=int(fields["processed"]),
        elapsed=float(fields["elapsed"].rstrip("s")),
        rate=float(fields["rate"].removesuffix("/s")),
        self_rss=kib(fields.get("peak_rss")),
        alerts=(fields["listing_drop"], fields["event_low"], fields["rule_match"]),
        lag=(fields["publish_lag_p50"], fields["publish_lag_p99"]),
        work=(f"stored={fields['prices_stored']} dup={fields['duplicates']} "
              f"stale={fields['stale']} rejected={fields['rejected']} "
              f"events={fields['events_created']} commits={fields['commits']} "
              f"published={fields['published_alerts']}+{fields['published_dead_letters']}dlq"),
    )


def parse_python(run, results):
    line = next((l for l in reversed((results / f"{run['name']}.out").read_text().splitlines())
                 if l.startswith("{") and "msgs_per_s" in l), None)
    if line is None:
        raise ValueError(f"{run['name']}: no final JSON line")
    data = json.loads(line)
    run.update(
        processed=int(data["processed"]),
        elapsed=float(data["elapsed_s"]),
        rate=float(data["msgs_per_s"]),
        self_rss=None,
        alerts=("n/a", "n/a", "n/a"),
        lag=("n/a", "n/a"),
        work=(f"stored={data['prices_stored']} dup={data['duplicates']} "
              f"errors={data['errors']} events={data['events_created']} "
              f"commits={data['prices_stored'] + data['duplicates']}(1/msg)"),
    )


def mib(value):
    return f"{value / 1024:.0f} MiB" if value is not None else "-"


def table(headers, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w)
                       for i, (x, w) in enumerate(zip(row, widths)))
             for row in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main():
    results = Path(sys.argv[1])
    facts, runs = read_manifest(results / "manifest")
    for run in runs:
        (parse_python if run["name"] == "py" else parse_conscope)(run, results)
        run["time_rss"], run["cpu"] = parse_time(results / f"{run['name']}.time")
        run["wall"] = float(facts[f"wall_{run['name']}"])
        before = facts["load_before_" + run["name"]].split()[0]
        after = facts["load_after_" + run["name"]].split()[0]
        run["load"] = f"{before}->{after}"
        run["settle"] = facts.get("settle_" + run["name"], "-")
    by = {run["name"]: run for run in runs}

    mem_gib = int(facts["mem_total_kb"]) / 1024 / 1024
    print()
    print(f"== conscope benchmark {facts['started']} .. {facts['finished']}"
          " (every figure below was measured in this run)")
    print(f"machine:  {facts['nproc']} CPUs ({facts['cpu_model']}), {mem_gib:.1f} GiB RAM"
          f" ({int(facts['mem_available_kb']) / 1024 / 1024:.1f} GiB available at start), {facts['kernel']}")
    print(f"load avg: {facts['load_start']} at start, {facts['load_end']} at end"
          " (1/5/15 min; other work on the machine is not controlled)")
    print(f"broker:   {facts['broker']}")
    print(f"postgres: {facts['postgres']}")
    print(f"conscope: {facts['binary']}, tree {facts['git']}")
    print(f"baseline: {facts.get('python', '?')}")
    if facts.get("conscope_env", "").strip():
        print(f"env:      {facts['conscope_env'].strip()}")
    for name in ("main", "base"):
        print(f"producer: {facts[f'produce_{name}']}")
    print()

    headers = ["run", "topic", "messages", "elapsed s", "wall s", "msgs/s", "cpu s",
               "peak RSS (self)", "max RSS (time -v)", "listing_drop", "event_low",
               "rule_match", "lag p50", "lag p99", "load 1m", "settle s"]
    rows = [[r["label"], r["topic"], r["processed"], f"{r['elapsed']:.1f}", f"{r['wall']:.1f}",
             f"{r['rate']:.0f}", f"{r['cpu']:.1f}" if r["cpu"] is not None else "-",
             mib(r["self_rss"]), mib(r["time_rss"]), *r["alerts"], *r["lag"], r["load"], r["settle"]]
            for r in runs]
    print(table(headers, rows))
    print()
    print("elapsed s / msgs/s: as each program reports them (conscope: from job start to the end of")
    print("the replay; python: from its first poll to its last message); wall s: the whole process,")
    print("startup included. cpu s: user+system of that process only (not Postgres, not the broker).")
    print("lag: publish lag of alerts (commit -> broker ack), whole run. load 1m: load average")
    print("before -> after the run. settle s: wait before the run for an idle, answering broker")
    print("(not part of any figure).")
    print()
    print("work done per run:")
    for r in runs:
        print(f"  {r['label']:<16} {r['topic']:<26} {r['work']}")
    print()

    def ratio(a, b):
        return by[a]["rate"] / by[b]["rate"]

    m, n = by["py"]["messages"], by["w1"]["messages"]
    print("ratios (msgs/s as reported):")
    print(f"  conscope -w 1 / python, same {m}-message topic: {ratio('base_w1', 'py'):8.1f}x")
    print(f"  conscope -w 2 / python, same {m}-message topic: {ratio('base_w2', 'py'):8.1f}x")
    print(f"  conscope -w 1 on {n} / python on {m}:     {ratio('w1', 'py'):8.1f}x"
          "  (different topics: conscope's sustained rate)")
    print(f"  conscope -w 2 on {n} / python on {m}:     {ratio('w2', 'py'):8.1f}x"
          "  (different topics)")
    print(f"  conscope -w 2 / -w 1, same {n}-message topic: {ratio('w2', 'w1'):8.2f}x"
          f"  (on {facts['nproc']} CPUs shared with Postgres and the broker)")
    print()

    wrong = [r for r in runs if r["processed"] != r["messages"]]
    for r in wrong:
        print(f"PROBLEM: {r['label']} on {r['topic']} processed {r['processed']} messages,"
              f" the topic holds {r['messages']}")
    return 3 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
