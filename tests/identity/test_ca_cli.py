"""`meshcore ca init | issue | show` as a user runs them."""
import os
import stat

import pytest

from meshcore.cli import main
from meshcore.identity import CertificateAuthority, FileCredentials, SpiffeId


def test_init_issue_show(tmp_path, capsys):
    ca_dir = tmp_path / "ca"
    assert main(["ca", "init", "--trust-domain", "mesh.example", "--dir", str(ca_dir)]) == 0
    assert main(["ca", "issue", "--namespace", "shop", "--service-account", "web",
                 "--dir", str(ca_dir), "--lifetime", "2h"]) == 0
    out_dir = ca_dir / "workloads" / "shop" / "web"
    assert stat.S_IMODE(os.stat(out_dir / "key.pem").st_mode) == 0o600
    creds = FileCredentials.from_directory(out_dir)
    assert creds.credentials.identity == SpiffeId("mesh.example", "shop", "web")
    life = creds.credentials.not_after - creds.credentials.not_before
    assert 7200 <= life.total_seconds() <= 7200 + 120
    capsys.readouterr()
    assert main(["ca", "show", str(out_dir / "cert-chain.pem")]) == 0
    shown = capsys.readouterr().out
    assert "spiffe://mesh.example/ns/shop/sa/web" in shown and "O=mesh.example" in shown
    assert CertificateAuthority.load(ca_dir).trust_domain == "mesh.example"


def test_errors_are_clear_and_nonzero(tmp_path, capsys):
    ca_dir = tmp_path / "ca"
    main(["ca", "init", "--trust-domain", "cluster.local", "--dir", str(ca_dir)])
    assert main(["ca", "init", "--trust-domain", "cluster.local", "--dir", str(ca_dir)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["ca", "issue", "--namespace", "a b", "--service-account", "x", "--dir", str(ca_dir)]) == 2
    assert "invalid namespace" in capsys.readouterr().err
    assert main(["ca", "show", str(tmp_path / "missing.pem")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.pem").write_text("hello")
    assert main(["ca", "show", str(tmp_path / "junk.pem")]) == 2
    assert "not a PEM certificate" in capsys.readouterr().err


@pytest.mark.parametrize("exc, expected", [
    (TimeoutError(), "TLS handshake failed: no handshake within the timeout"),
    (ConnectionResetError(), "TLS handshake failed: ConnectionResetError"),
    (ConnectionResetError(104, "Connection reset by peer"), "TLS handshake failed: [Errno 104] Connection reset by peer"),
])
def test_handshake_failures_always_say_what_happened(exc, expected):
    from meshcore.identity.tls import handshake_error
    assert str(handshake_error(exc, "10.0.0.1:4000")).startswith(expected)


@pytest.mark.parametrize("text, seconds", [("24h", 86400), ("1h30m", 5400), ("90m", 5400), ("3650d", 3650 * 86400),
                                           ("2.5h", 9000), ("1m30s", 90), ("500ms", 0.5)])
def test_durations_take_go_syntax(text, seconds):
    from meshcore.identity.cli import parse_duration
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "1x", "h", "1h 30m", "0s", "-1h"])
def test_bad_durations_are_refused(text):
    import argparse
    from meshcore.identity.cli import parse_duration
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
