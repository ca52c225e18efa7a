#!/usr/bin/env python3
"""The real reader of keel's TensorBoard event files: TensorBoard's own EventAccumulator (PyPI
`tensorboard`) loads the committed golden golden/tensorboard/events.out.tfevents.0.keel and this
script writes what it saw, tag by tag, to golden/tensorboard_scalars.json. keel's test
(tests/runtime/test_tensorboard.cpp) checks that the JSON holds exactly the scalars it wrote, and
that its writer still produces the committed events file byte for byte.

TensorBoard skips a record whose CRC is wrong without a word, so the framing is first checked
here with TensorBoard's own masked CRC-32C: every record must be whole and both CRCs right, and
every event must read with TensorBoard's Event definition and write back to the same bytes.

With --keel-tests the events file is first rewritten by keel's current writer, through the test
that also checks it (environment variable KEEL_WRITE_TENSORBOARD_GOLDEN).

    python3 -m venv /tmp/tb && /tmp/tb/bin/pip install tensorboard
    /tmp/tb/bin/python tests/reference/tensorboard_ref.py \
        --keel-tests build/tests/keel_runtime_tests
"""
import argparse
import json
import os
import struct
import subprocess

import google.protobuf
import tensorboard
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
EVENTS_DIR = os.path.join(GOLDEN, "tensorboard")
EVENTS_NAME = "events.out.tfevents.0.keel"


def write_events(tests_binary):
    env = dict(os.environ, KEEL_WRITE_TENSORBOARD_GOLDEN=EVENTS_DIR)
    test = "TensorBoard.CommittedGoldenIsWhatTheWriterWrites"
    subprocess.run([tests_binary, "--gtest_filter=" + test], check=True, env=env)


def count_records(path):
    """The number of records, after checking the framing of every one, and that TensorBoard's
    own Event definition, parsing each record and writing it again, gives the same bytes (keel
    writes the fields TensorFlow's way, with nothing TensorBoard would not know)."""
    with open(path, "rb") as f:
        data = f.read()
    at, n = 0, 0
    while at < len(data):
        assert at + 12 <= len(data), f"record {n} at byte {at}: truncated header"
        (length,) = struct.unpack_from("<Q", data, at)
        (length_crc,) = struct.unpack_from("<I", data, at + 8)
        assert masked_crc32c(data[at:at + 8]) == length_crc, f"record {n}: bad length CRC"
        end = at + 12 + length
        assert end + 4 <= len(data), f"record {n} at byte {at}: truncated data"
        (data_crc,) = struct.unpack_from("<I", data, end)
        assert masked_crc32c(data[at + 12:end]) == data_crc, f"record {n}: bad data CRC"
        event = event_pb2.Event.FromString(data[at + 12:end])
        event.DiscardUnknownFields()
        assert event.SerializeToString() == data[at + 12:end], f"record {n}: not canonical"
        at, n = end + 4, n + 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel-tests", help="first rewrite the events file with this "
                                         "keel_runtime_tests binary")
    a = ap.parse_args()
    if a.keel_tests:
        write_events(a.keel_tests)
    path = os.path.join(EVENTS_DIR, EVENTS_NAME)
    records = count_records(path)

    acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {
        tag: [{"step": e.step, "wall_time": e.wall_time, "value": e.value}
              for e in acc.Scalars(tag)]
        for tag in sorted(tags[event_accumulator.SCALARS])
    }
    seen = sum(len(v) for v in scalars.values())
    # One record is the file_version event, every other one a scalar: none may go missing.
    assert seen == records - 1, f"{records} records but TensorBoard saw {seen} scalars"
    other = {k: v for k, v in tags.items() if k != event_accumulator.SCALARS and v}
    golden = {
        "tensorboard": tensorboard.__version__, "protobuf": google.protobuf.__version__,
        "events_file": os.path.relpath(path, GOLDEN), "records": records,
        "file_version": acc.file_version, "other_tags": other, "scalars": scalars,
    }
    with open(os.path.join(GOLDEN, "tensorboard_scalars.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"tensorboard {tensorboard.__version__}: {seen} scalars under {len(scalars)} tags")


if __name__ == "__main__":
    main()
