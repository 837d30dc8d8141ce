"""`meshcore ca init | issue | show`."""
from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path

from meshcore.errors import IdentityError
from meshcore.identity.ca import KEY_TYPES, CertificateAuthority
from meshcore.identity.spiffe import SpiffeId
from meshcore.identity.x509util import certs_pem, describe, load_pem_chain, write_private, write_public

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> dt.timedelta:
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 24h, 90m or 7d")
    return dt.timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def add_parser(sub) -> None:
    ca = sub.add_parser("ca", help="the built-in certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    init = ca_sub.add_parser("init", help="create a root CA in DIR")
    init.add_argument("--trust-domain", required=True)
    init.add_argument("--dir", required=True, type=Path)
    init.add_argument("--key-type", default="ec-p256", choices=KEY_TYPES)
    init.add_argument("--lifetime", default="3650d", type=parse_duration)
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_init)
    issue = ca_sub.add_parser("issue", help="issue a workload certificate")
    issue.add_argument("--namespace", required=True)
    issue.add_argument("--service-account", required=True)
    issue.add_argument("--dir", required=True, type=Path, help="the CA directory")
    issue.add_argument("--out", type=Path, help="default: DIR/workloads/NAMESPACE/SERVICE_ACCOUNT")
    issue.add_argument("--lifetime", default="24h", type=parse_duration)
    issue.add_argument("--key-type", default="ec-p256", choices=KEY_TYPES)
    issue.set_defaults(func=_issue)
    show = ca_sub.add_parser("show", help="print the identity, issuer and validity of a PEM file")
    show.add_argument("file", type=Path)
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
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    write_private(out / "key.pem", creds.key_pem())
    write_public(out / "cert-chain.pem", creds.chain_pem())
    write_public(out / "root-cert.pem", certs_pem(ca.roots))
    print(f"issued {identity} valid until {creds.not_after.isoformat()}")
    print(f"  {out / 'cert-chain.pem'}\n  {out / 'key.pem'} (0600)\n  {out / 'root-cert.pem'}")
    return 0


def _show(args) -> int:
    if not args.file.is_file():
        raise IdentityError(f"{args.file}: no such file")
    for i, cert in enumerate(load_pem_chain(args.file.read_bytes(), str(args.file))):
        info = describe(cert)
        print(f"certificate {i}:")
        for key in ("identity", "subject", "issuer", "serial", "not_before", "not_after", "is_ca", "key"):
            print(f"  {key:<11} {info[key]}")
    return 0
