"""The conformance suite: a port against refpose float64, stage by stage (refpose.porting.conformance.suite).

Test ids read `test_stage[CONFIG-PRECISION-bBATCH-INPUT-STAGE]`, e.g. `tiny-fp32-b2-photo-s3`:
the float32 port on two photo inputs, checked at s3's output at the float32 tolerance. Within a
case the stages run in network order; a failure names its stage and the later stages of that
case are skipped as "earlier stage ... diverged".
"""
from __future__ import annotations

import pytest

from refpose.porting.conformance.plugin import SUITE
from refpose.porting.conformance.suite import STAGES

NOT_ASKED = ("the conformance suite needs --refpose-backend SPEC and --refpose-weights FILE, or "
             "--refpose-golden GOLDEN.npz and --refpose-outputs THEIRS.npz (see pytest --help)")


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    suite = metafunc.config.stash.get(SUITE, None)
    if suite is None:
        metafunc.parametrize("case, stage", [pytest.param(None, None, id="not-asked",
                                                           marks=pytest.mark.skip(reason=NOT_ASKED))])
        return
    metafunc.parametrize("case, stage", [pytest.param(case, stage, id=f"{case.id}-{stage}")
                                         for case in suite.cases() for stage in STAGES])


@pytest.fixture
def suite(request):
    return request.config.stash[SUITE]


def test_stage(suite, case, stage):
    verdict = suite.verdict(case, stage)
    if verdict.status == "skip":
        pytest.skip(verdict.message)
    if verdict.status == "fail":
        pytest.fail(verdict.message, pytrace=False)
