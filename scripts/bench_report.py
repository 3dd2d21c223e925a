#!/usr/bin/env python3
"""Prints the report of a scripts/bench.sh run from its results directory.

    scripts/bench_report.py .stack/bench/<ts>

Reads the directory's `manifest` (facts as key=value lines) and each step's raw
outputs: NAME.out (conscope's `summary:` line, the producer's `produced ...`
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
THROUGHPUT_TARGET = 0.70  # conscope msgs/s / min(broker read, COPY) limit
ALERT_P99_TARGET_MS = 250.0  # produce -> alert on the topic, p99


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


def main():
    report = Report(Path(sys.argv[1]))
    facts, results = report.facts, report.results
    count = int(facts["count"])
    baseline = int(facts["baseline_count"])

    drain = last_json(results / "drain.out", "msgs_per_s")
    copy = last_json(results / "copy.out", "rows_per_s")
    if drain["messages"] != count:
        report.problems.append(f"the plain consumer read {drain['messages']} messages, the topic holds {count}")
    if copy["messages"] != count:
        report.problems.append(f"the COPY step read {copy['messages']} messages, the topic holds {count}")
    drain_rss, drain_cpu = parse_time(results / "drain.time")

    runs = {}
    for name, label, messages in (("w1", "conscope -w 1", count), ("w2", "conscope -w 2", count),
                                  ("base_w1", "conscope -w 1", baseline),
                                  ("base_w2", "conscope -w 2", baseline)):
        run = report.conscope(name, label, messages)
        if run:
            runs[name] = run
    python = report.python(baseline)

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
    if "python" in facts:
        print(f"baseline: {facts['python']}")
    if facts.get("conscope_env", "").strip():
        print(f"env:      {facts['conscope_env'].strip()}")
    print(f"input:    {facts['produce_main']}")
    print(f"rules:    {facts['rules']} active in every conscope database (scripts/bench.sh step 5)")
    print()

    # --- throughput -------------------------------------------------------------
    rows = [
        ["broker read limit (plain librdkafka consumer)", drain["messages"], fmt(drain["seconds"], "{:.2f}"),
         f"{drain['msgs_per_s']:.0f}", fmt(drain_cpu), fmt(per_million(drain_cpu, drain["messages"])),
         "-", "-", fmt(report.broker_cpu("drain")), fmt(report.busy("drain"), "{:.0f}"), mib(drain_rss),
         report.load("drain"), f"{drain['mb_per_s']:.0f} MB/s"],
        ["Postgres COPY limit (price_history rows)", copy["messages"], fmt(copy["copy_seconds"], "{:.2f}"),
         f"{copy['msgs_per_s']:.0f}", "-", "-", fmt(copy["postgres_cpu_ticks"] * report.tick),
         fmt(per_million(copy["postgres_cpu_ticks"] * report.tick, copy["messages"])), "-", "-", "-",
         report.load("copy"), f"{copy['rows']} rows, {copy['rows_per_s']:.0f} rows/s"],
    ]
    for run in [runs.get("w1"), runs.get("w2"), python, runs.get("base_w1"), runs.get("base_w2")]:
        if run:
            rows.append([run["label"], run["messages"], fmt(run["seconds"]), f"{run['rate']:.0f}",
                         fmt(run["cpu"]), fmt(per_million(run["cpu"], run["messages"])), fmt(run["pg"]),
                         fmt(per_million(run["pg"], run["messages"])), fmt(run["broker"]),
                         fmt(run["busy"], "{:.0f}"), mib(run["rss"]), run["load"], run["note"]])
    print("throughput")
    print(table(["what", "messages", "seconds", "msgs/s", "cpu s", "cpu s/1M", "pg cpu s", "pg cpu s/1M",
                 "broker cpu s", "busy %", "peak RSS", "load 1m", "notes"], rows))
    print()
    print("seconds / msgs/s: plain consumer from assign to its last message; COPY: the COPY statement")
    print("alone, into a table LIKE price_history (its primary key; no foreign key to events), msgs/s =")
    print("input messages it stands for / its seconds; conscope: from job start to the end of the")
    print("replay, every alert published; python: first poll to last message.")
    print("cpu s: user+system of that process (/usr/bin/time -v). pg cpu s: user+system of every")
    print("postgres process, ended backends included, before -> after (COPY: around the statement);")
    print("other clients of this Postgres count too. broker cpu s: the broker process (when its pid is")
    print(f"known). busy %: all {facts['nproc']} CPUs of the machine, whoever used them (100 = all busy).")
    print("peak RSS: max RSS (time -v, else the job's VmHWM).")
    print()
    print("work done:")
    for run in [runs.get("w1"), runs.get("w2"), python, runs.get("base_w1"), runs.get("base_w2")]:
        if run:
            print(f"  {run['label']:<16} {run['messages']:>8} msgs  {run['work']}")
    print(f"  COPY             {copy['messages']:>8} msgs  rows={copy['rows']} dup={copy['duplicates']}"
          f" rejected={copy['rejected']}")
    print()

    # --- ratios -------------------------------------------------------------------
    limits = {"broker read": drain["msgs_per_s"], "COPY": copy["msgs_per_s"]}
    limit_name = min(limits, key=limits.get)
    limit = limits[limit_name]
    print(f"ratios (the lower limit is the {limit_name} limit, {limit:.0f} msgs/s):")
    for name in ("w1", "w2"):
        if name in runs:
            ratio = runs[name]["rate"] / limit
            verdict = "meets" if ratio >= THROUGHPUT_TARGET else "BELOW"
            print(f"  {runs[name]['label']} / min(broker read, COPY): {ratio * 100:6.1f} %"
                  f"  ({verdict} the {THROUGHPUT_TARGET * 100:.0f} % target)")
    if python:
        same = "base_w" if "base_w1" in runs else "w"
        topic_note = (f"same {baseline}-message topic" if same == "base_w"
                      else f"same {count}-message topic")
        for workers in ("1", "2"):
            run = runs.get(same + workers)
            if not run:
                continue
            print(f"  {run['label']} / python, msgs/s, {topic_note}: {run['rate'] / python['rate']:8.1f}x")
        run = runs.get(same + "1")
        if run and run["cpu"] and python["cpu"] and run["pg"] is not None and python["pg"] is not None:
            own = python["cpu"] / python["messages"] / (run["cpu"] / run["messages"])
            total = ((python["cpu"] + python["pg"]) / python["messages"]
                     / ((run["cpu"] + run["pg"]) / run["messages"]))
            print(f"  python / {run['label']}, CPU per message: {own:8.1f}x (process alone),"
                  f" {total:.1f}x (process + Postgres)")
        if same == "base_w":
            print(f"  (python ran on {baseline} of the {count} messages: it commits once per message)")
    print()

    # --- latency --------------------------------------------------------------------
    lat_line = facts.get("lat_metrics", "")
    if lat_line:
        fields = metrics_fields(lat_line)
        alerts = last_json(results / "lat_alerts.out", "alerts")
        produced = facts["produce_lat"]
        achieved = re.search(r"in ([\d.]+)s: (\d+) msgs/s", produced)
        lat_count = int(facts["latency_rate"]) * int(facts["latency_seconds"])
        window = float(facts["wall_lat"]) + float(facts["lat_catch_up_s"])
        job_cpu = int(facts["lat_job_ticks"]) * report.tick
        pg_cpu = report.pg_cpu("lat", "pg_ticks_caught_up_lat")
        epoch = facts.get("latency_epoch_ms", "default")
        epoch = "default --epoch-ms" if epoch == "default" else f"--epoch-ms {epoch}"
        print(f"latency: conscope run -w 2 ({epoch}) as a service, producer at {facts['latency_rate']} msgs/s for"
              f" {facts['latency_seconds']} s ({lat_count} messages; achieved"
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
            verdict = "meets" if p99 < ALERT_P99_TARGET_MS else "MISSES"
            print(f"  produce -> alert p99 {p99:.1f} ms: {verdict} the < {ALERT_P99_TARGET_MS:.0f} ms target")
        print(f"  alerts: {alerts['alerts']} on the topic, {alerts['matched']} matched to their input message,"
              f" {facts['lat_alert_rows']} rows in price_alerts;"
              f" publish lag (commit -> ack, last alerts) p50 {fields['publish_lag_p50']}"
              f" p99 {fields['publish_lag_p99']}")
        _, producer_cpu = parse_time(results / "lat.time")
        broker_cpu = report.broker_cpu("lat", "broker_ticks_caught_up_lat")
        busy = report.busy("lat", "machine_ticks_caught_up_lat")

        def share(seconds):
            return f"{fmt(seconds)} s ({seconds / window * 100:.0f} %)" if seconds is not None else "-"

        print(f"  CPU over {window:.0f} s (producing + {facts['lat_catch_up_s']} s to catch up; % of one CPU):"
              f" conscope {share(job_cpu)}, Postgres {share(pg_cpu)}, broker {share(broker_cpu)},"
              f" producer {share(producer_cpu)}; machine {fmt(busy, '{:.0f}')} % busy of"
              f" {facts['nproc']} CPUs; conscope peak RSS {facts.get('lat_peak_rss', '?')}")
        if int(fields["processed"]) != lat_count:
            report.problems.append(f"latency run processed {fields['processed']} of {lat_count} messages")
        if alerts["alerts"] != int(facts["lat_alert_rows"]):
            report.problems.append(f"latency run: {alerts['alerts']} alerts on the topic,"
                                   f" {facts['lat_alert_rows']} rows in price_alerts")
        if alerts["matched"] != alerts["alerts"]:
            report.problems.append(f"latency run: {alerts['alerts'] - alerts['matched']} alerts without"
                                   " their triggering message in the input topic")
        print()

    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    return 3 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
