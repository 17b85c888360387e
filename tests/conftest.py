"""Fixtures for every test directory.

`seed`: the random tests draw their inputs from it. A fresh seed per test
module (so each run explores new cases), printed so that a failing test's
captured output shows it, and named by the tests in their failure messages;
set GPT2ACCEL_SEED=<seed> to replay a run.
"""
import os
import random

import pytest


@pytest.fixture(scope="module")
def seed():
    env = os.environ.get("GPT2ACCEL_SEED")
    value = int(env) if env else random.SystemRandom().randrange(1 << 31)
    print(f"GPT2ACCEL_SEED={value}")
    return value
