"""The source checks behind two README rules (no shell or other program; TLS always verified)
catch every way round them we know of, and pass the patterns the package legitimately uses.

The checks themselves run on the package in tests/scenarios/test_fault_matrix.py
(``test_no_shell_is_ever_invoked_from_the_package_source``,
``test_tls_certificates_are_verified_and_there_is_no_switch_to_turn_it_off``); here each bypass
is a snippet that must be reported, so a check that goes blind fails this file.
"""

from __future__ import annotations

import textwrap

import pytest
from support.source_audit import process_offences, tls_offences

PROCESS_BYPASSES = {
    "import subprocess": "import subprocess\nsubprocess.run(['ls'])",
    "aliased subprocess": "import subprocess as sp",
    "from subprocess": "from subprocess import Popen",
    "os.system": "import os\nos.system('ls')",
    "aliased os": "import os as o\no.system('ls')",
    "from os import system": "from os import system\nsystem('ls')",
    "from os import system as": "from os import system as run\nrun('ls')",
    "from os import *": "from os import *",
    "os.popen": "import os\nos.popen('ls')",
    "os.execv": "import os\nos.execv('/bin/ls', ['ls'])",
    "os.execvpe": "import os\nos.execvpe('ls', ['ls'], {})",
    "from os import execl": "from os import execl",
    "os.spawnv": "import os\nos.spawnv(os.P_WAIT, '/bin/ls', ['ls'])",
    "os.spawnlp": "import os\nos.spawnlp(os.P_WAIT, 'ls', 'ls')",
    "os.posix_spawn": "import os\nos.posix_spawn('/bin/ls', ['ls'], {})",
    "posix module": "import posix\nposix.system('ls')",
    "pty": "import pty\npty.spawn('sh')",
    "os.forkpty": "import os\nos.forkpty()",
    "getattr constant": "import os\ngetattr(os, 'system')('ls')",
    "getattr computed": "import os\ngetattr(os, 'sys' + 'tem')('ls')",
    "attrgetter": "import os, operator\noperator.attrgetter('system')(os)('ls')",
    "vars subscript": "import os\nvars(os)['system']('ls')",
    "sys.modules": "import sys\nsys.modules['subprocess']",
    "importlib constant": "import importlib\nimportlib.import_module('subprocess')",
    "from importlib": "from importlib import import_module\nimport_module('pty')",
    "__import__": "__import__('subprocess')",
    "importlib computed": "import importlib\nimportlib.import_module(input())",
    "asyncio": "import asyncio\nasyncio.create_subprocess_exec('ls')",
    "asyncio.subprocess": "from asyncio import subprocess",
    "ctypes libc": "import ctypes\nctypes.CDLL(None).system(b'ls')",
    "ctypes subscript": "import ctypes\nctypes.CDLL(None)['execv']",
    "webbrowser": "import webbrowser",
    "multiprocessing executable": "import multiprocessing\nmultiprocessing.set_executable('x')",
    "shell keyword": "run(['ls'], shell=True)",
    "eval": "eval('1')",
    "exec": "exec('import os')",
    "compile": "compile('x', 'f', 'exec')",
    "in a function": "def f():\n    import subprocess as s\n    s.call('ls')",
}

ALLOWED = {
    "fork": "import os\npid = os.fork()\nos._exit(0)",
    "process pool": "from concurrent.futures import ProcessPoolExecutor\nProcessPoolExecutor(2)",
    "getattr constant": "import os\nO_CLOEXEC = getattr(os, 'O_CLOEXEC', 0)",
    "platform.system": "import platform\nplatform.system()",
    "libc mallopt": "import ctypes\nctypes.CDLL(None).mallopt(1, 2)",
    "hasattr computed": "hasattr(object(), input())",
    "lazy attributes": textwrap.dedent('''
        import importlib
        _LAZY = {"load": "isic2020.catalog.tables", "folds": "isic2020.commands.folds"}
        def __getattr__(name):
            module = _LAZY.get(name)
            return getattr(importlib.import_module(module), name)
        '''),
    "attrgetter of dataclass fields": textwrap.dedent('''
        from dataclasses import dataclass, fields
        from operator import attrgetter
        @dataclass
        class M:
            name: str
            size: int
        FIELDS = [f.name for f in fields(M)]
        row = attrgetter(*FIELDS)
        '''),
}


@pytest.mark.parametrize("source", PROCESS_BYPASSES.values(), ids=PROCESS_BYPASSES.keys())
def test_every_way_to_run_a_program_is_reported(source: str) -> None:
    assert process_offences(source), f"not caught:\n{source}"


@pytest.mark.parametrize("source", ALLOWED.values(), ids=ALLOWED.keys())
def test_forking_own_workers_and_harmless_lookups_pass(source: str) -> None:
    assert process_offences(source) == []


def test_lazy_import_of_a_module_outside_the_package_is_reported() -> None:
    src = ALLOWED["lazy attributes"].replace('"isic2020.commands.folds"', '"subprocess"')
    assert process_offences(src)


TLS_BYPASSES = {
    "verify keyword": "requests.get(url, verify=False)",
    "verify keyword computed": "requests.get(url, verify=flag)",
    "session.verify": "s = requests.Session()\ns.verify = False",
    "verify from env": "s.verify = os.environ.get('X') != '0'",
    "verify in a dict": "kw['verify'] = False",
    "setattr verify": "setattr(s, 'verify', False)",
    "check_hostname": "ctx.check_hostname = False",
    "check_hostname keyword": "f(check_hostname=False)",
    "verify_mode": "ctx.verify_mode = ssl.CERT_NONE",
    "verify_mode int": "ctx.verify_mode = 0",
    "CERT_NONE": "import ssl\nmode = ssl.CERT_NONE",
    "CERT_OPTIONAL": "import ssl\nmode = ssl.CERT_OPTIONAL",
    "from ssl import CERT_NONE": "from ssl import CERT_NONE",
    "getattr CERT_NONE": "getattr(ssl, 'CERT_NONE')",
    "cert_reqs keyword": "PoolManager(cert_reqs='CERT_NONE')",
    "assert_hostname": "PoolManager(assert_hostname=False)",
    "unverified context": "import ssl\nssl._create_unverified_context()",
    "default https context": "ssl._create_default_https_context = ssl._create_stdlib_context",
    "disable_warnings": "import urllib3\nurllib3.disable_warnings()",
    "InsecureRequestWarning": "from urllib3.exceptions import InsecureRequestWarning",
    "CURL_CA_BUNDLE": "os.environ['CURL_CA_BUNDLE'] = ''",
    "tuple assignment": "a.x, s.verify = 1, False",
}

TLS_ALLOWED = {
    "verify True": "requests.get(url, verify=True)",
    "session.verify True": "s.verify = True",
    "check_hostname True": "ctx.check_hostname = True",
    "CERT_REQUIRED": "ctx.verify_mode = ssl.CERT_REQUIRED",
    "verify function": "verify(data_dir=d)\nfrom .verify import verify",
}


@pytest.mark.parametrize("source", TLS_BYPASSES.values(), ids=TLS_BYPASSES.keys())
def test_every_way_to_turn_tls_verification_off_is_reported(source: str) -> None:
    assert tls_offences(source), f"not caught:\n{source}"


@pytest.mark.parametrize("source", TLS_ALLOWED.values(), ids=TLS_ALLOWED.keys())
def test_verified_tls_passes(source: str) -> None:
    assert tls_offences(source) == []
