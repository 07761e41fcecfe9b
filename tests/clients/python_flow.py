"""A python-pkcs11 application, run by tests/clients_python.rs and tests/clients_shared.rs
(`python python_flow.py MODULE PIN ROUNDS [--no-keygen]`): generates an AES key and an EC
key pair on the token, encrypts and decrypts with AES-GCM, signs and verifies with ECDSA
ROUNDS times, and destroys the AES key. It prints only what is the same on every fresh
token (names, lengths, results), so a direct run and a run through keytrail can be compared.
"""

import hashlib
import sys

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters


def main():
    module, pin, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    keygen = "--no-keygen" not in sys.argv[4:]
    lib = pkcs11.lib(module)
    print("library:", lib.manufacturer_id, lib.library_description)
    token = lib.get_token(token_label="keytrail-test")
    print("token:", token.label, token.model)
    with token.open(user_pin=pin, rw=True) as session:
        if keygen:
            aes = session.generate_key(KeyType.AES, 256, label="py-aes", id=b"\x21", store=True)
            params = session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                local=True,
            )
            params.generate_keypair(label="py-ec", id=b"\x22", store=True)
            gcm = GCMParams(bytes(12), b"aad")
            ct = aes.encrypt(b"keytrail python flow", mechanism_param=gcm, mechanism=Mechanism.AES_GCM)
            pt = aes.decrypt(ct, mechanism_param=gcm, mechanism=Mechanism.AES_GCM)
            print("gcm ciphertext bytes:", len(ct), "round trip:", pt == b"keytrail python flow")
        priv = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, label="py-ec")
        pub = session.get_key(ObjectClass.PUBLIC_KEY, KeyType.EC, label="py-ec")
        ok = 0
        for i in range(rounds):
            # SoftHSM 2.6 has no CKM_ECDSA_SHA256: hash here, sign the digest.
            digest = hashlib.sha256(b"message %d" % i).digest()
            sig = priv.sign(digest, mechanism=Mechanism.ECDSA)
            ok += pub.verify(digest, sig, mechanism=Mechanism.ECDSA)
        print("signatures verified:", ok, "of", rounds)
        if keygen:
            session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label="py-aes").destroy()
            left = list(session.get_objects({Attribute.LABEL: "py-aes"}))
            print("aes keys left:", len(left))


if __name__ == "__main__":
    main()
