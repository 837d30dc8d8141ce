"""`meshcore ca init | issue | show`."""
from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path

from meshcore.errors import IdentityError
from meshcore.identity.ca import KEY_TYPES, CertificateAuthority
from meshcore.identity.spiffe import SpiffeId
from meshcore.identity.x509util import certs_pem, describe, load_pem_chain, write_private, write_public

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """Go's duration notation as Istio users write it (`1h30m`, `90m`, `24h`, `2.5h`),
    plus `d` for days (`3650d`)."""
    compact = text.strip()
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 24h, 1h30m, 90m or 3650d")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be longer than zero")
    return dt.timedelta(seconds=seconds)


def add_parser(sub) -> None:
    ca = sub.add_parser("ca", help="the built-in certificate authority",
                        description="Create a CA, issue SPIFFE workload certificates from it, and inspect "
                                    "certificate files. Files use Istio's layout (ca-cert.pem, ca-key.pem, "
                                    "root-cert.pem, cert-chain.pem, key.pem).")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    init = ca_sub.add_parser("init", help="create a root CA in DIR",
                             description="Create a self-signed root CA for one trust domain in DIR.")
    init.add_argument("--trust-domain", required=True, help="the SPIFFE trust domain, e.g. cluster.local")
    init.add_argument("--dir", required=True, type=Path, help="directory to write the CA files to")
    init.add_argument("--key-type", default="ec-p256", choices=KEY_TYPES, help="CA key type (default: ec-p256)")
    init.add_argument("--lifetime", default="3650d", type=parse_duration,
                      help="validity, Go duration syntax plus days: 3650d, 8760h (default: 3650d)")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_init)
    issue = ca_sub.add_parser("issue", help="issue a workload certificate",
                              description="Issue a key and certificate for spiffe://<trust domain>/ns/"
                                          "NAMESPACE/sa/SERVICE_ACCOUNT from the CA in DIR.")
    issue.add_argument("--namespace", required=True, help="the workload's namespace")
    issue.add_argument("--service-account", required=True, help="the workload's service account")
    issue.add_argument("--dir", required=True, type=Path, help="the CA directory")
    issue.add_argument("--out", type=Path, help="where to write cert-chain.pem, key.pem and root-cert.pem "
                                                "(default: DIR/workloads/NAMESPACE/SERVICE_ACCOUNT)")
    issue.add_argument("--lifetime", default="24h", type=parse_duration,
                       help="validity, Go duration syntax: 24h, 1h30m (default: 24h)")
    issue.add_argument("--key-type", default="ec-p256", choices=KEY_TYPES, help="key type (default: ec-p256)")
    issue.set_defaults(func=_issue)
    show = ca_sub.add_parser("show", help="print the identity, issuer and validity of certificates",
                             description="Print every certificate of a PEM file, or of the certificate files "
                                         "in a directory (a CA or workload directory).")
    show.add_argument("file", type=Path, metavar="PATH", help="a PEM file, or a directory holding them")
    show.set_defaults(func=_show)


def _init(args) -> int:
    if (args.dir / "ca-key.pem").exists() and not args.force:
        raise IdentityError(f"{args.dir / 'ca-key.pem'} exists; pass --force to replace the CA")
    ca = CertificateAuthority.create(args.trust_domain, key_type=args.key_type, lifetime=args.lifetime)
    ca.save(args.dir)
    info = describe(ca.cert)
    print(f"created CA for trust domain {args.trust_domain} in {args.dir}")
    print(f"  subject  {info['subject']}\n  valid    {info['not_before']} .. {info['not_after']}")
    return 0


def _issue(args) -> int:
    ca = CertificateAuthority.load(args.dir)
    identity = SpiffeId(ca.trust_domain, args.namespace, args.service_account)
    creds = ca.issue(identity, lifetime=args.lifetime, key_type=args.key_type)
    out = args.out or args.dir / "workloads" / args.namespace / args.service_account
    try:
        out.mkdir(parents=True, exist_ok=True)
        out.chmod(0o700)
        write_private(out / "key.pem", creds.key_pem())
        write_public(out / "cert-chain.pem", creds.chain_pem())
        write_public(out / "root-cert.pem", certs_pem(ca.roots))
    except OSError as exc:
        raise IdentityError(f"cannot write the certificate files to {out}: {exc.strerror or exc}") from None
    print(f"issued {identity} valid until {creds.not_after.isoformat()}")
    print(f"  {out / 'cert-chain.pem'}\n  {out / 'key.pem'} (0600)\n  {out / 'root-cert.pem'}")
    return 0


_CERT_FILES = ("ca-cert.pem", "root-cert.pem", "cert-chain.pem", "tls.crt", "ca.crt", "svid.pem",
               "svid_bundle.pem")


def _show(args) -> int:
    path: Path = args.file
    if path.is_dir():
        files = [path / name for name in _CERT_FILES if (path / name).is_file()]
        if not files:
            raise IdentityError(f"{path} is a directory without certificate files "
                                f"(looked for {', '.join(_CERT_FILES)})")
    elif path.exists():
        files = [path]
    else:
        raise IdentityError(f"{path}: no such file or directory")
    for f in files:
        try:
            chain = load_pem_chain(f.read_bytes(), str(f))
        except OSError as exc:
            raise IdentityError(f"{f}: cannot read: {exc.strerror or exc}") from None
        for i, cert in enumerate(chain):
            info = describe(cert)
            print(f"{f}, certificate {i}:" if len(files) > 1 else f"certificate {i}:")
            for key in ("identity", "subject", "issuer", "serial", "not_before", "not_after", "is_ca", "key"):
                print(f"  {key:<11} {info[key]}")
    return 0
