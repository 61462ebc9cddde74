import sys
import textwrap

import pytest

from harness import hookimpl
from harness.errors import ConfigError
from harness.plugins.manager import make_plugins

# Never launches a kernel: CI runs this file once, with Triton hidden (.ci/run's no-Triton pass).
pytestmark = pytest.mark.no_triton


def test_builtin_methods_and_tasks_are_registered():
    plugins = make_plugins()
    assert {"fp16", "rtn", "gptq", "owq", "pbllm"} <= set(plugins.methods.names())
    assert {"wikitext2", "c4"} <= set(plugins.tasks.names())


def test_unknown_names_fail_with_known_names_and_a_suggestion():
    plugins = make_plugins()
    with pytest.raises(ConfigError) as err:
        plugins.methods.get("rtm")
    msg = str(err.value)
    assert "\n" not in msg
    assert "unknown method 'rtm'; known: " in msg and "fp16" in msg and "Did you mean 'rtn'?" in msg
    with pytest.raises(ConfigError, match="unknown task 'wikitext3'.*c4.*wikitext2"):
        plugins.tasks.get("wikitext3")


class _Extra:
    """A plugin object defined in a test: a method registered through the registrar hook."""

    @hookimpl
    def harness_register_methods(self, register):
        from methods.rtn import Rtn

        class Double(Rtn):
            name = "double_rtn"

        register(Double)


def test_extra_plugin_object_registers_a_method():
    assert "double_rtn" in make_plugins(extra=[_Extra()]).methods.names()


def test_registering_a_name_twice_is_an_error():
    class Dup:
        @hookimpl
        def harness_register_methods(self, register):
            from methods.rtn import Rtn

            class Other(Rtn):
                name = "rtn"

            register(Other)

    with pytest.raises(ValueError, match="registered twice"):
        make_plugins(extra=[Dup()])


def test_misspelled_hook_is_rejected():
    class Typo:
        @hookimpl
        def harness_register_method(self, register):  # missing "s"
            pass

    with pytest.raises(Exception, match="unknown hook"):
        make_plugins(extra=[Typo()])


def test_entry_point_plugin_is_loaded(tmp_path, monkeypatch):
    """A third-party package (a real dist-info on sys.path) adds a task through the entry-point group."""
    (tmp_path / "thirdparty_task.py").write_text(textwrap.dedent('''
        from harness import hookimpl
        from tasks.perplexity import WikiText2

        class Shakespeare(WikiText2):
            name = "shakespeare"

        @hookimpl
        def harness_register_tasks(register):
            register(Shakespeare)
    '''))
    info = tmp_path / "thirdparty_task-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-task\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[harness]\nshakespeare = thirdparty_task\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = make_plugins()
    assert "shakespeare" in plugins.tasks.names()
    assert "thirdparty_task" in sys.modules
