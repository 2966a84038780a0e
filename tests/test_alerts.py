"""
The example Prometheus alert rules (docs/alerts.yml): valid for promtool,
about metrics the daemon serves, and raising the alerts their unit tests
(tests/alerts_test.yml) expect from synthetic series.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "docs" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

needs_promtool = pytest.mark.skipif(
    not shutil.which("promtool"),
    reason="no promtool (Debian: apt-get install prometheus)",
)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["promtool", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULE_TESTS.parent,
    )


@needs_promtool
def test_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_rules_raise_the_alerts_their_unit_tests_expect():
    result = promtool("test", "rules", str(RULE_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_use_only_metrics_the_runbook_documents():
    documented = set(re.findall(r"`(p2a_[a-z_]+)", OPERATIONS.read_text()))
    used = set(re.findall(r"\b(p2a_[a-z_]+?)(?:_bucket)?\b", RULES.read_text()))

    assert used - {"p2a_connector"} <= documented


def test_every_alert_rule_is_explained_in_the_runbook():
    alerts = re.findall(r"- alert: (\w+)", RULES.read_text())

    assert alerts
    assert [a for a in alerts if f"`{a}`" not in OPERATIONS.read_text()] == []
