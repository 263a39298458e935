#!/usr/bin/python3
"""Throwaway test PKI for the specs.

Usage: ca.py DIR

Writes into DIR (created if missing):
  ca.pem / ca.key                 the test CA (give ca.pem to the client as cafile)
  good.pem / good.key             localhost, 127.0.0.1, ::1, signed by the CA
  wrong-host.pem / .key           other.example only, signed by the CA
  expired.pem / .key              localhost, 127.0.0.1, notAfter in the past
  future.pem / .key               localhost, 127.0.0.1, notBefore in the future
  self-signed.pem / .key          localhost, 127.0.0.1, signs itself
  untrusted.pem / .key            localhost, 127.0.0.1, from a CA not in ca.pem
  wildcard.pem / .key             *.localhost only (does not cover "localhost")
  partial-wildcard.pem / .key     w*.example.test only (a partial wildcard, which a
                                  strict client refuses for www.example.test)
  client.pem / .key               a client certificate (clientAuth) from the CA
  untrusted-ca.pem                the CA that signed untrusted.pem
  done                            written last: the directory is complete

EC P-256 keys keep generation fast (well under a second for the set).
Prints the directory on success. Running it again on a complete DIR does
nothing.
"""
import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
DAY = datetime.timedelta(days=1)
LOCAL_SANS = [x509.DNSName("localhost"),
              x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
              x509.IPAddress(ipaddress.ip_address("::1"))]


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailer tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn):
    key = new_key()
    subject = name(cn)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(cn, sans, issuer=None, not_before=None, not_after=None, client=False):
    """A leaf certificate; issuer is (key, cert) or None for self-signed."""
    key = new_key()
    subject = name(cn)
    sign_key, issuer_name = (issuer[0], issuer[1].subject) if issuer else (key, subject)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or NOW - DAY)
               .not_valid_after(not_after or NOW + 825 * DAY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False)
    return key, builder.sign(sign_key, hashes.SHA256())


def write(directory, stem, key, cert):
    # Write to a temporary name, then rename: a reader never sees half a file.
    pem = cert.public_bytes(serialization.Encoding.PEM)
    tmp = os.path.join(directory, stem + ".pem.tmp")
    with open(tmp, "wb") as f:
        f.write(pem)
    os.replace(tmp, os.path.join(directory, stem + ".pem"))
    if key is not None:
        data = key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        tmp = os.path.join(directory, stem + ".key.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(directory, stem + ".key"))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: ca.py DIR")
    directory = sys.argv[1]
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(os.path.join(directory, "done")):
        print(directory)
        return
    ca = make_ca("mailer test CA")
    other_ca = make_ca("mailer untrusted CA")
    write(directory, "ca", *ca)
    write(directory, "untrusted-ca", None, other_ca[1])
    leaves = {
        "good": make_leaf("localhost", LOCAL_SANS, ca),
        "wrong-host": make_leaf("other.example", [x509.DNSName("other.example")], ca),
        "expired": make_leaf("localhost", LOCAL_SANS, ca,
                             not_before=NOW - 60 * DAY, not_after=NOW - 2 * DAY),
        "future": make_leaf("localhost", LOCAL_SANS, ca,
                            not_before=NOW + 30 * DAY, not_after=NOW + 60 * DAY),
        "self-signed": make_leaf("localhost", LOCAL_SANS, None),
        "untrusted": make_leaf("localhost", LOCAL_SANS, other_ca),
        "wildcard": make_leaf("*.localhost", [x509.DNSName("*.localhost")], ca),
        "partial-wildcard": make_leaf("w*.example.test", [x509.DNSName("w*.example.test")], ca),
        "client": make_leaf("mailer test client", None, ca, client=True),
    }
    for stem, (key, cert) in leaves.items():
        write(directory, stem, key, cert)
    with open(os.path.join(directory, "done"), "w") as f:
        f.write("ok\n")
    print(directory)


if __name__ == "__main__":
    main()
