r"""Synthetic TV viewing logs with a planted cause, in the real logs' format.

    python -m ovt_explain.make_synthetic_logs --output_dir=data/synthetic [--num_users=3000 --num_days=7
        --num_channels=6 --random_seed=0]

Writes into `--output_dir` the original's input files:
- `viewing.csv`: a header `userid,sortid`, then one row per watched slot (convert_to_sentence's input);
- `tv_meta_data.csv`: the programme metadata (`channel,番組名,サブタイトル,放送日（開始）,開始時刻,sortid`; the
  4th column is the broadcast date, as generate_vocab reads it); the target special is 番組名 "Special T"
  with an empty subtitle;
and the same data as
- `logs.txt`: `{"user_id": "program_id ..."}`, time-ordered 11-digit programme-slot ids (the slot's Unix
  time, 5-minute slots, then the channel digit), like the real files;
- `programs.json`: slot id -> {channel, time, title, program} (the programme table);
- `planted.json`: the ground truth: the target programme's slots (`target_slots`), the cause series
  and its episodes' slots before the target (`cause_slots`), and the generation settings.

The world: channels air daily series in fixed evening blocks (episodes every day) and a few one-off
specials; users have favourite series (popularity-weighted), a favourite channel they zap around on,
and watch part or all of each episode they catch, plus random zapping noise. The planted cause:
users who watched at least `min_cause_episodes` episodes of series S (and nothing else about them
matters) watch the target special T on the last evening with probability `p_viewed_cause`; everyone
else with `p_viewed_other`. Non-viewers sometimes zap through one or two of T's slots (under the
one-third rule). The same seed gives the same files.
"""

from __future__ import annotations

import os

if __package__ in (None, ""):  # run as a file, `python ovt_explain/make_synthetic_logs.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

import dataclasses  # noqa: E402
import datetime  # noqa: E402

import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from common.io_utils import atomic_write_json  # noqa: E402
from ovt_explain.logs import write_logs  # noqa: E402

SLOT_SECONDS = 300
START_TIME = 1627776000  # 2021-08-01 00:00 UTC
EVENING_START_HOUR = 18
BLOCK_SLOTS = 6          # 30-minute blocks
BLOCKS_PER_EVENING = 10  # 18:00 - 23:00
GENRES = ("News", "Drama", "Variety", "Anime", "Sports", "Documentary", "Quiz", "Music", "Cooking", "Movie")


@dataclasses.dataclass
class SyntheticLogs:
    histories: dict[str, list[str]]
    programs: dict[str, dict]
    planted: dict


def slot_id(day: int, slot_of_evening: int, channel: int) -> str:
    seconds = START_TIME + day * 86400 + EVENING_START_HOUR * 3600 + slot_of_evening * SLOT_SECONDS
    return f"{seconds}{channel}"


def _clock(day: int, slot_of_evening: int) -> str:
    seconds = START_TIME + day * 86400 + EVENING_START_HOUR * 3600 + slot_of_evening * SLOT_SECONDS
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def generate_synthetic_logs(num_users: int = 3000, num_days: int = 7, num_channels: int = 6,
                            random_seed: int = 0, min_cause_episodes: int = 2, p_viewed_cause: float = 0.9,
                            p_viewed_other: float = 0.05, cause_share: float = 0.3,
                            favourites_per_user: tuple[int, int] = (2, 4), p_catch_episode: float = 0.65,
                            zaps_per_evening: float = 1.0) -> SyntheticLogs:
    if not 2 <= num_channels <= 9:
        raise ValueError(f"num_channels must be 2..9 (one digit of the slot id), got {num_channels}")
    if num_days < 2 or num_users < 10:
        raise ValueError("need at least 2 days and 10 users")
    rng = np.random.default_rng(random_seed)

    # Daily series: one per (channel, block); block b of channel c airs series (c, b) every day.
    series = [(channel, block) for channel in range(1, num_channels + 1) for block in range(BLOCKS_PER_EVENING)]
    series_title = {key: f"{GENRES[(key[0] * 3 + key[1]) % len(GENRES)]} {key[0]}-{key[1] + 1}" for key in series}
    last_day = num_days - 1
    # The target special T: the last evening, 21:00-22:00 on channel 1 (replacing its two series blocks).
    target_channel, target_blocks = 1, (6, 7)
    target_slot_range = range(target_blocks[0] * BLOCK_SLOTS, (target_blocks[-1] + 1) * BLOCK_SLOTS)
    target_slots = [slot_id(last_day, s, target_channel) for s in target_slot_range]
    # The cause series S: a drama on channel 2 at 19:30, i.e. before T on the last day too.
    cause = (2, 3)
    series_title[cause] = "Drama S"

    def airs(key, day):
        return not (day == last_day and key[0] == target_channel and key[1] in target_blocks)

    programs: dict[str, dict] = {}
    for day in range(num_days):
        for key in series:
            if not airs(key, day):
                continue
            for s in range(key[1] * BLOCK_SLOTS, (key[1] + 1) * BLOCK_SLOTS):
                programs[slot_id(day, s, key[0])] = {
                    "channel": f"Ch{key[0]}", "time": _clock(day, s), "title": f"{series_title[key]} #{day + 1}",
                    "program": f"{key[0]}-{key[1]}-d{day + 1}"}
    for s in target_slot_range:
        programs[slot_id(last_day, s, target_channel)] = {
            "channel": f"Ch{target_channel}", "time": _clock(last_day, s), "title": "Special T",
            "program": "special-T"}

    # Popularity of the other series (Zipf-like), the cause series gets its own share.
    others = [key for key in series if key != cause]
    popularity = 1.0 / (1 + rng.permutation(len(others)))
    popularity /= popularity.sum()

    histories: dict[str, list[str]] = {}
    cause_slots_all = {slot_id(day, s, cause[0]) for day in range(num_days)
                       for s in range(cause[1] * BLOCK_SLOTS, (cause[1] + 1) * BLOCK_SLOTS)}
    target_start = min(target_slot_range)
    for user_index in range(num_users):
        low, high = favourites_per_user
        count = int(rng.integers(low, high + 1))
        favourites = [others[i] for i in rng.choice(len(others), size=count, replace=False, p=popularity)]
        if rng.random() < cause_share:
            favourites.append(cause)
        home_channel = int(rng.integers(1, num_channels + 1))
        # Habitual viewers catch their series more reliably.
        catch = min(0.95, p_catch_episode + (0.25 if rng.random() < 0.3 else 0.0))
        watched: set[tuple[int, int, int]] = set()  # (day, slot of evening, channel)
        cause_episodes = 0
        for day in range(num_days):
            for key in favourites:
                if not airs(key, day) or rng.random() >= catch:
                    continue
                first = key[1] * BLOCK_SLOTS
                begin = first + int(rng.integers(0, 2))
                length = int(rng.integers(BLOCK_SLOTS // 2, BLOCK_SLOTS + 1))
                for s in range(begin, min(first + BLOCK_SLOTS, begin + length)):
                    watched.add((day, s, key[0]))
                if key == cause and (day < last_day or first + BLOCK_SLOTS <= target_start):
                    cause_episodes += 1
            # Zapping noise around the home channel (and elsewhere).
            for _ in range(int(rng.poisson(zaps_per_evening))):
                channel = home_channel if rng.random() < 0.6 else int(rng.integers(1, num_channels + 1))
                s = int(rng.integers(0, BLOCKS_PER_EVENING * BLOCK_SLOTS))
                if day == last_day and channel == target_channel and s in target_slot_range:
                    continue
                watched.add((day, s, channel))
        # The planted cause: only the number of cause episodes decides T.
        p_view = p_viewed_cause if cause_episodes >= min_cause_episodes else p_viewed_other
        if rng.random() < p_view:
            begin = min(target_slot_range) + int(rng.integers(0, 3))
            length = int(rng.integers(len(target_slot_range) // 2, len(target_slot_range) + 1))
            for s in range(begin, min(max(target_slot_range) + 1, begin + length)):
                watched.add((last_day, s, target_channel))
        elif rng.random() < 0.2:
            s = int(rng.choice(target_slot_range))
            watched.add((last_day, s, target_channel))
        # One slot per time: a viewer watches one channel at a time (keep the lowest channel).
        by_time: dict[tuple[int, int], int] = {}
        for day, s, channel in sorted(watched):
            by_time.setdefault((day, s), channel)
        history = [slot_id(day, s, channel) for (day, s), channel in sorted(by_time.items())]
        if history:
            histories[f"U{user_index:05d}"] = history

    target_start_time = int(target_slots[0][:-1])
    cause_slots = sorted(slot for slot in cause_slots_all if int(slot[:-1]) < target_start_time)
    planted = {
        "target_title": "Special T", "target_slots": target_slots,
        "cause_title": "Drama S", "cause_slots": cause_slots,
        "rule": f"users with >= {min_cause_episodes} episodes of Drama S before T watch T with p="
                f"{p_viewed_cause}, others with p={p_viewed_other}",
        "settings": {"num_users": num_users, "num_days": num_days, "num_channels": num_channels,
                     "random_seed": random_seed, "min_cause_episodes": min_cause_episodes,
                     "p_viewed_cause": p_viewed_cause, "p_viewed_other": p_viewed_other,
                     "cause_share": cause_share},
    }
    return SyntheticLogs(histories, programs, planted)


TARGET_TITLE = "Special T"


def write_original_files(synthetic: SyntheticLogs, viewing_csv: str, meta_data_csv: str) -> None:
    """The original's viewing CSV (userid,sortid) and programme metadata CSV (broadcast date 4th)."""
    import csv

    from common.io_utils import atomic_output

    with atomic_output(viewing_csv) as handle:
        handle.write("userid,sortid\n")
        for user, history in synthetic.histories.items():
            handle.write("".join(f"{user},{slot}\n" for slot in history))
    with atomic_output(meta_data_csv) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["channel", "番組名", "サブタイトル", "放送日（開始）", "開始時刻", "sortid"])
        for slot in sorted(synthetic.programs, key=int):
            entry = synthetic.programs[slot]
            day, clock = entry["time"].split(" ")
            title, _, episode = entry["title"].rpartition(" #")
            if entry["title"] == TARGET_TITLE:
                title, episode = TARGET_TITLE, ""
            writer.writerow([entry["channel"], title, f"#{episode}" if episode else "", day.replace("-", "/"),
                             clock, slot])


def write_synthetic_logs(output_dir: str, **settings) -> dict:
    """Generates and writes viewing.csv, tv_meta_data.csv, logs.txt, programs.json, planted.json;
    returns the paths and counts."""
    synthetic = generate_synthetic_logs(**settings)
    os.makedirs(output_dir, exist_ok=True)
    names = ("logs.txt", "programs.json", "planted.json", "viewing.csv", "tv_meta_data.csv")
    paths = {name: os.path.join(output_dir, name) for name in names}
    write_logs(paths["logs.txt"], synthetic.histories)
    write_original_files(synthetic, paths["viewing.csv"], paths["tv_meta_data.csv"])
    atomic_write_json(paths["programs.json"], synthetic.programs)
    atomic_write_json(paths["planted.json"], synthetic.planted)
    return {"paths": paths, "users": len(synthetic.histories), "programs": len(synthetic.programs)}


FLAGS = flags.FLAGS


def define_flags():
    """Flags only when run as a script, so importing the module defines none."""
    flags.DEFINE_string("output_dir", None, "Folder for logs.txt, programs.json and planted.json.")
    flags.DEFINE_integer("num_users", 3000, "Users to simulate.")
    flags.DEFINE_integer("num_days", 7, "Days of evening schedule (18:00-23:00); the target airs on the last.")
    flags.DEFINE_integer("num_channels", 6, "Channels (2..9: one digit of the slot id).")
    flags.DEFINE_integer("random_seed", 0, "Seed; the same seed writes the same files.")


def main(argv):
    del argv
    if not FLAGS.output_dir:
        raise cli.UserError("--output_dir is required")
    try:
        result = write_synthetic_logs(FLAGS.output_dir, num_users=FLAGS.num_users, num_days=FLAGS.num_days,
                                      num_channels=FLAGS.num_channels, random_seed=FLAGS.random_seed)
    except ValueError as error:
        raise cli.UserError(str(error)) from None
    logging.info("wrote %d users, %d programme slots: %s", result["users"], result["programs"],
                 ", ".join(result["paths"].values()))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
