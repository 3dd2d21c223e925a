#!/usr/bin/env python3
"""Prints the report of a scripts/bench.sh run from its results directory.

    scripts/bench_report.py .stack/bench/<ts>

Reads the directory's `manifest` (facts as key=value lines) and each step's raw
outputs (NAME = WORLD, WORLD_drain, WORLD_copy, WORLD_w1, WORLD_w2, WORLD_lat,
py, base_w1, base_w2): NAME.out (conscope's `summary:` line, the producer's `produced ...`
line, or a JSON line from examples/bench.rs or the Python consumer), NAME.time
(/usr/bin/time -v, when it was available). Computes every figure and ratio from
those only. Standard library only.

Exits 1 when an output cannot be parsed, 3 when a run did not process exactly
the messages its topic holds or the latency run lost alerts (the report is
printed first).
"""

import json
import re
import sys
from pathlib import Path

MILLION = 1_000_000
ALERT_P99_TARGET_MS = 250.0  # produce -> alert on the topic, p99
# The targets at -w 2, per world (issue 13; small: the first benchmark's).
# ratio: msgs/s over the lower limit; rate: msgs/s; cpu: conscope + Postgres
# CPU-s per 1M messages; rss_mb: peak RSS in 10^6 bytes; speedup: -w 2 / -w 1.
TARGETS = {
    "small": dict(source="the first benchmark", ratio=0.70),
    "100k": dict(source="issue 13", ratio=0.70, cpu=15.0, rss_mb=300, speedup=1.3),
    "1m": dict(source="issue 13", rate=50_000, cpu=20.0, rss_mb=600),
}


def read_manifest(path):
    facts = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        facts[key] = value
    return facts


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


def last_json(path, key):
    """The last JSON object line of PATH that has KEY."""
    for line in reversed(path.read_text().splitlines()):
        if line.startswith("{") and f'"{key}"' in line:
            return json.loads(line)
    raise ValueError(f"{path.name}: no JSON line with {key}")


def metrics_fields(line):
    """key=value fields of a conscope metrics or summary line."""
    return dict(re.findall(r"([a-z_0-9]+)=(\S+)", line.replace("[", " ").replace("]", " ")))


def kib(text):
    """'12345kB' -> 12345."""
    match = re.fullmatch(r"(\d+)kB", text or "")
    return int(match.group(1)) if match else None


def ms(text):
    """'12.3ms' -> 12.3; '-' -> None."""
    match = re.fullmatch(r"([\d.]+)ms", text or "")
    return float(match.group(1)) if match else None


class Report:
    def __init__(self, results):
        self.results = results
        self.facts = read_manifest(results / "manifest")
        self.tick = 1.0 / int(self.facts.get("clk_tck", "100"))
        self.problems = []

    def fact(self, key, default=None):
        return self.facts.get(key, default)

    def pg_cpu(self, name, after_key=None):
        """Postgres CPU seconds over step NAME (every postgres process)."""
        before = self.fact(f"pg_ticks_before_{name}")
        after = self.fact(after_key or f"pg_ticks_after_{name}")
        if before is None or after is None:
            return None
        return (int(after) - int(before)) * self.tick

    def broker_cpu(self, name, after_key=None):
        """The broker's CPU seconds over step NAME, when its pid was known."""
        before = self.fact(f"broker_ticks_before_{name}")
        after = self.fact(after_key or f"broker_ticks_after_{name}")
        if not before or not after:
            return None
        return (int(after) - int(before)) * self.tick

    def busy(self, name, after_key=None):
        """How busy all CPUs of the machine were over step NAME, in percent."""
        before = self.fact(f"machine_ticks_before_{name}", "").split()
        after = self.fact(after_key or f"machine_ticks_after_{name}", "").split()
        if len(before) != 2 or len(after) != 2:
            return None
        total = int(after[0]) - int(before[0])
        idle = int(after[1]) - int(before[1])
        return 100.0 * (total - idle) / total if total > 0 else None

    def load(self, name):
        before = self.fact(f"load_before_{name}", "?").split()[0]
        after = self.fact(f"load_after_{name}", "?").split()[0]
        return f"{before}->{after}"

    def conscope(self, name, label, messages):
        out = self.results / f"{name}.out"
        if not out.exists():
            return None
        line = next((l for l in reversed(out.read_text().splitlines()) if l.startswith("summary: ")), None)
        if line is None:
            raise ValueError(f"{name}: no summary line")
        fields = metrics_fields(line)
        rss, cpu = parse_time(self.results / f"{name}.time")
        processed = int(fields["processed"])
        if processed != messages:
            self.problems.append(f"{label} processed {processed} messages, its topic holds {messages}")
        return dict(
            label=label, messages=processed, seconds=float(fields["elapsed"].rstrip("s")),
            rate=float(fields["rate"].removesuffix("/s")), cpu=cpu, pg=self.pg_cpu(name),
            rss=rss or kib(fields.get("peak_rss")), load=self.load(name),
            broker=self.broker_cpu(name), busy=self.busy(name),
            note=(f"alerts {fields['listing_drop']}/{fields['event_low']}/{fields['rule_match']}"
                  f" (drop/low/rule), publish lag p99 {fields['publish_lag_p99']}"),
            work=(f"stored={fields['prices_stored']} dup={fields['duplicates']} stale={fields['stale']} "
                  f"rejected={fields['rejected']} events={fields['events_created']} "
                  f"commits={fields['commits']} published={fields['published_alerts']}"
                  f"+{fields['published_dead_letters']}dlq"),
        )

    def python(self, messages):
        out = self.results / "py.out"
        if not out.exists():
            return None
        data = last_json(out, "msgs_per_s")
        rss, cpu = parse_time(self.results / "py.time")
        if int(data["processed"]) != messages:
            self.problems.append(f"python processed {data['processed']} messages, expected {messages}")
        return dict(
            label="python consumer", messages=int(data["processed"]), seconds=float(data["elapsed_s"]),
            rate=float(data["msgs_per_s"]), cpu=cpu, pg=self.pg_cpu("py"), rss=rss, load=self.load("py"),
            broker=self.broker_cpu("py"), busy=self.busy("py"),
            note="1 transaction per message",
            work=(f"stored={data['prices_stored']} dup={data['duplicates']} errors={data['errors']} "
                  f"events={data['events_created']}"),
        )


def fmt(value, pattern="{:.1f}"):
    return pattern.format(value) if value is not None else "-"


def per_million(value, messages):
    return value * MILLION / messages if value is not None and messages else None


def mib(kib_value):
    return f"{kib_value / 1024:.0f} MiB" if kib_value is not None else "-"


def table(headers, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w)
                       for i, (x, w) in enumerate(zip(row, widths)))
             for row in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def copy_row(report, name, copy, label):
    pg = copy["postgres_cpu_ticks"] * report.tick
    return [label, copy["messages"], fmt(copy["copy_seconds"], "{:.2f}"), f"{copy['msgs_per_s']:.0f}",
            "-", "-", fmt(pg), fmt(per_million(pg, copy["messages"])), "-", "-", "-", "-",
            report.load(name), f"{copy['rows']} rows, {copy['rows_per_s']:.0f} rows/s"]


def run_row(run):
    return [run["label"], run["messages"], fmt(run["seconds"]), f"{run['rate']:.0f}",
            fmt(run["cpu"]), fmt(per_million(run["cpu"], run["messages"])), fmt(run["pg"]),
            fmt(per_million(run["pg"], run["messages"])), fmt(per_million(total_cpu(run), run["messages"])),
            fmt(run["broker"]), fmt(run["busy"], "{:.0f}"), mib(run["rss"]), run["load"], run["note"]]


HEADERS = ["what", "messages", "seconds", "msgs/s", "cpu s", "cpu s/1M", "pg cpu s", "pg cpu s/1M",
           "total s/1M", "broker cpu s", "busy %", "peak RSS", "load 1m", "notes"]


def total_cpu(run):
    """conscope + Postgres CPU seconds of a run, when both were measured."""
    return run["cpu"] + run["pg"] if run["cpu"] is not None and run["pg"] is not None else None


def verdict(ok):
    return "meets" if ok else "BELOW"


def world_section(report, world):
    """Prints one world's throughput, ratios and targets; returns its summary row."""
    facts, results = report.facts, report.results
    source = facts[f"world_{world}_source"]
    count = int(facts[f"world_{world}_count"])
    knobs = facts.get(f"world_{world}_knobs", "") or "the generator's defaults"
    listings = int(facts[f"listings_{world}"])
    print(f"== world {world}: {listings} listings seen, {count} messages from "
          f"{'a file' if source == 'file' else 'Kafka'} (conscope produce {knobs}, seed 1)")
    print(f"input:    {facts[f'produce_{world}']}")
    print(f"rules:    {facts[f'rules_{world}']} active in every conscope database of this world")

    copy = last_json(results / f"{world}_copy.out", "rows_per_s")
    if copy["messages"] != count:
        report.problems.append(f"{world}: the COPY step read {copy['messages']} messages, the input holds {count}")
    rows = []
    limits = {"COPY": copy["msgs_per_s"]}
    if source == "kafka":
        drain = last_json(results / f"{world}_drain.out", "msgs_per_s")
        if drain["messages"] != count:
            report.problems.append(f"{world}: the plain consumer read {drain['messages']} messages,"
                                   f" the topic holds {count}")
        drain_rss, drain_cpu = parse_time(results / f"{world}_drain.time")
        limits["broker read"] = drain["msgs_per_s"]
        rows.append(["broker read limit (plain librdkafka consumer)", drain["messages"],
                     fmt(drain["seconds"], "{:.2f}"), f"{drain['msgs_per_s']:.0f}", fmt(drain_cpu),
                     fmt(per_million(drain_cpu, drain["messages"])), "-", "-", "-",
                     fmt(report.broker_cpu(f"{world}_drain")), fmt(report.busy(f"{world}_drain"), "{:.0f}"),
                     mib(drain_rss), report.load(f"{world}_drain"), f"{drain['mb_per_s']:.0f} MB/s"])
    rows.append(copy_row(report, f"{world}_copy", copy, "Postgres COPY limit (price_history rows)"))
    runs = {}
    for workers in ("1", "2"):
        run = report.conscope(f"{world}_w{workers}", f"conscope -w {workers}", count)
        if run:
            runs[workers] = run
            rows.append(run_row(run))
    print(table(HEADERS, rows))
    for run in runs.values():
        print(f"  work, {run['label']}: {run['work']}")
    print(f"  work, COPY: rows={copy['rows']} dup={copy['duplicates']} rejected={copy['rejected']}")

    limit_name = min(limits, key=limits.get)
    limit = limits[limit_name]
    if len(limits) > 1:
        print(f"  limit: min(broker read, COPY) = the {limit_name} limit, {limit:.0f} msgs/s")
    else:
        print(f"  limit: the {limit_name} limit, {limit:.0f} msgs/s (a file: no broker read)")
    for run in runs.values():
        total = per_million(total_cpu(run), run["messages"])
        print(f"  {run['label']}: {run['rate'] / limit * 100:.1f} % of the limit;"
              f" CPU-s per 1M messages: conscope {fmt(per_million(run['cpu'], run['messages']))}"
              f" + Postgres {fmt(per_million(run['pg'], run['messages']))} = {fmt(total)};"
              f" peak RSS {mib(run['rss'])}")
    speedup = runs["2"]["rate"] / runs["1"]["rate"] if "1" in runs and "2" in runs else None
    if speedup is not None:
        print(f"  -w 2 / -w 1 speed-up: {speedup:.2f}x")

    targets = TARGETS.get(world, {})
    run = runs.get("2")
    if targets and run:
        print(f"  targets at -w 2 ({targets['source']}):")
        if "ratio" in targets:
            ratio = run["rate"] / limit
            print(f"    msgs/s {run['rate']:.0f} = {ratio * 100:.1f} % of {limit_name} limit:"
                  f" {verdict(ratio >= targets['ratio'])} (>= {targets['ratio'] * 100:.0f} %)")
        if "rate" in targets:
            print(f"    msgs/s {run['rate']:.0f}: {verdict(run['rate'] >= targets['rate'])}"
                  f" (>= {targets['rate']:.0f})")
        if "cpu" in targets:
            total = per_million(total_cpu(run), run["messages"])
            ok = total is not None and total <= targets["cpu"]
            print(f"    conscope + Postgres CPU-s per 1M {fmt(total)}: {verdict(ok)} (<= {targets['cpu']:.0f})")
        if "rss_mb" in targets:
            mb = run["rss"] * 1024 / 1e6 if run["rss"] is not None else None
            ok = mb is not None and mb <= targets["rss_mb"]
            print(f"    peak RSS {fmt(mb, '{:.0f}')} MB: {verdict(ok)} (<= {targets['rss_mb']} MB, MB = 10^6 bytes)")
        if "speedup" in targets:
            ok = speedup is not None and speedup >= targets["speedup"]
            print(f"    -w 2 / -w 1 {fmt(speedup, '{:.2f}')}x: {verdict(ok)} (>= {targets['speedup']}x)")
    print()

    def per_m(workers, key):
        run = runs.get(workers)
        return fmt(per_million(run[key] if key != "total" else total_cpu(run), run["messages"])) if run else "-"

    return [world, listings, count, source, *(f"{runs[w]['rate']:.0f}" if w in runs else "-" for w in ("1", "2")),
            fmt(speedup, "{:.2f}x"), per_m("2", "cpu"), per_m("2", "pg"), per_m("2", "total"),
            mib(runs["2"]["rss"]) if "2" in runs else "-",
            f"{runs['2']['rate'] / limit * 100:.1f} % of {limit_name}" if "2" in runs else "-"]


def python_section(report):
    """The Python consumer against conscope on the same topic."""
    facts = report.facts
    count = int(facts["world_small_count"])
    baseline = int(facts["baseline_count"])
    python = report.python(baseline)
    if not python:
        return
    same = "base_w" if (report.results / "base_w1.out").exists() else "small_w"
    runs = {w: report.conscope(f"{same}{w}", f"conscope -w {w}", baseline) for w in ("1", "2")}
    print(f"== the Python storage consumer ({facts['python']}), small world")
    rows = [run_row(python)] + [run_row(run) for run in runs.values() if run]
    print(table(HEADERS, rows))
    print(f"  work, python: {python['work']}")
    topic_note = f"same {baseline}-message topic"
    for workers, run in runs.items():
        if run:
            print(f"  {run['label']} / python, msgs/s, {topic_note}: {run['rate'] / python['rate']:8.1f}x")
    run = runs.get("1")
    if run and run["cpu"] and python["cpu"] and run["pg"] is not None and python["pg"] is not None:
        own = python["cpu"] / python["messages"] / (run["cpu"] / run["messages"])
        total = ((python["cpu"] + python["pg"]) / python["messages"]
                 / ((run["cpu"] + run["pg"]) / run["messages"]))
        print(f"  python / {run['label']}, CPU per message: {own:8.1f}x (process alone),"
              f" {total:.1f}x (process + Postgres)")
    if same == "base_w":
        print(f"  (python ran on {baseline} of the {count} messages: it commits once per message)")
    print()


def latency_section(report, world):
    facts, results = report.facts, report.results
    name = f"{world}_lat"
    lat_line = facts.get(f"{name}_metrics", "")
    if not lat_line:
        report.problems.append(f"latency run of world {world}: no metrics line")
        return None
    fields = metrics_fields(lat_line)
    alerts = last_json(results / f"{name}_alerts.out", "alerts")
    produced = facts[f"produce_{name}"]
    achieved = re.search(r"in ([\d.]+)s: (\d+) msgs/s", produced)
    lat_count = int(facts["latency_rate"]) * int(facts["latency_seconds"])
    window = float(facts[f"wall_{name}"]) + float(facts[f"{name}_catch_up_s"])
    job_cpu = int(facts[f"{name}_job_ticks"]) * report.tick
    pg_cpu = report.pg_cpu(name, f"pg_ticks_caught_up_{name}")
    epoch = facts.get("latency_epoch_ms", "default")
    epoch = "default --epoch-ms" if epoch == "default" else f"--epoch-ms {epoch}"
    print(f"== latency, world {world}: conscope run -w 2 ({epoch}) as a service, producer at"
          f" {facts['latency_rate']} msgs/s for {facts['latency_seconds']} s ({lat_count} messages; achieved"
          f" {achieved.group(2) if achieved else '?'} msgs/s over {achieved.group(1) if achieved else '?'} s)")
    rows = [
        ["produce -> row committed", fields["processed"], fmt(ms(fields.get("commit_lag_p50"))),
         fmt(ms(fields.get("commit_lag_p99"))), "-",
         "the job's histogram: commit time - Kafka timestamp, every message"],
        ["produce -> alert on the topic", alerts["matched"], fmt(alerts["on_topic_p50_ms"]),
         fmt(alerts["on_topic_p99_ms"]), fmt(alerts["on_topic_max_ms"]),
         f"alert's {alerts['alert_timestamp']} - triggering message's Kafka timestamp"],
        ["produce -> alert received", alerts["matched"], fmt(alerts["received_p50_ms"]),
         fmt(alerts["received_p99_ms"]), fmt(alerts["received_max_ms"]),
         "receive time in a consumer tailing the alerts topic"],
    ]
    print(table(["what", "samples", "p50 ms", "p99 ms", "max ms", "how"], rows))
    p99 = alerts["on_topic_p99_ms"]
    if p99 is not None:
        print(f"  produce -> alert p99 {p99:.1f} ms: {'meets' if p99 < ALERT_P99_TARGET_MS else 'MISSES'}"
              f" the < {ALERT_P99_TARGET_MS:.0f} ms target")
    print(f"  alerts: {alerts['alerts']} on the topic, {alerts['matched']} matched to their input message,"
          f" {facts[f'{name}_alert_rows']} rows in price_alerts;"
          f" publish lag (commit -> ack, last alerts) p50 {fields['publish_lag_p50']}"
          f" p99 {fields['publish_lag_p99']}")
    _, producer_cpu = parse_time(results / f"{name}.time")
    broker_cpu = report.broker_cpu(name, f"broker_ticks_caught_up_{name}")
    busy = report.busy(name, f"machine_ticks_caught_up_{name}")

    def share(seconds):
        return f"{fmt(seconds)} s ({seconds / window * 100:.0f} %)" if seconds is not None else "-"

    print(f"  CPU over {window:.0f} s (producing + {facts[f'{name}_catch_up_s']} s to catch up; % of one CPU):"
          f" conscope {share(job_cpu)}, Postgres {share(pg_cpu)}, broker {share(broker_cpu)},"
          f" producer {share(producer_cpu)}; machine {fmt(busy, '{:.0f}')} % busy of"
          f" {facts['nproc']} CPUs; conscope peak RSS {facts.get(f'{name}_peak_rss', '?')}")
    if int(fields["processed"]) != lat_count:
        report.problems.append(f"latency run {world} processed {fields['processed']} of {lat_count} messages")
    if alerts["alerts"] != int(facts[f"{name}_alert_rows"]):
        report.problems.append(f"latency run {world}: {alerts['alerts']} alerts on the topic,"
                               f" {facts[f'{name}_alert_rows']} rows in price_alerts")
    if alerts["matched"] != alerts["alerts"]:
        report.problems.append(f"latency run {world}: {alerts['alerts'] - alerts['matched']} alerts without"
                               " their triggering message in the input topic")
    print()
    return p99


def main():
    report = Report(Path(sys.argv[1]))
    facts = report.facts
    worlds = [w for w in facts.get("worlds", "").split(",") if w]
    latency_worlds = [w for w in facts.get("latency_worlds", "").split(",") if w]

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
    if facts.get("conscope_env", "").strip():
        print(f"env:      {facts['conscope_env'].strip()}")
    print(f"worlds:   {', '.join(worlds)}; latency on: {', '.join(latency_worlds) or 'none'}")
    print()
    print("seconds / msgs/s: plain consumer from assign to its last message; COPY: the COPY statement")
    print("alone, into a table LIKE price_history (its primary key; no foreign key to events), msgs/s =")
    print("input messages it stands for / its seconds; conscope: from job start to the end of the")
    print("replay, every alert published; python: first poll to last message.")
    print("cpu s: user+system of that process (/usr/bin/time -v). pg cpu s: user+system of every")
    print("postgres process, ended backends included, before -> after (COPY: around the statement);")
    print("other clients of this Postgres count too. total s/1M: conscope + Postgres. broker cpu s: the")
    print(f"broker process (when its pid is known). busy %: all {facts['nproc']} CPUs of the machine,")
    print("whoever used them (100 = all busy). peak RSS: max RSS (time -v, else the job's VmHWM).")
    print()

    summary = [world_section(report, world) for world in worlds]
    if "python" in facts:
        python_section(report)
    p99s = {world: latency_section(report, world) for world in latency_worlds}

    print("== summary (conscope; CPU-s per 1M messages, RSS and ratio at -w 2)")
    print(table(["world", "listings", "messages", "source", "-w1 msgs/s", "-w2 msgs/s", "speed-up",
                 "cpu s/1M", "pg cpu s/1M", "total s/1M", "peak RSS", "to limit"], summary))
    for world, p99 in p99s.items():
        print(f"  latency {world}: produce -> alert p99 {fmt(p99)} ms at {facts['latency_rate']} msgs/s")
    print()

    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    return 3 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
