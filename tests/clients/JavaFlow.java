// A SunPKCS11 application, run by tests/clients_java.rs as a single-file source program
// (`java JavaFlow.java CONFIG PIN ROUNDS [--no-keygen]`): it loads the token's key store,
// signs ROUNDS times with the stored key, then (unless --no-keygen) generates an EC key
// pair and an AES key on the token, signs and verifies with SHA256withECDSA, and encrypts
// and decrypts with AES-GCM. It prints only what is the same on every fresh token
// (names, lengths, results), so a direct run and a run through keytrail can be compared.

import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.Security;
import java.security.Signature;
import java.security.cert.Certificate;
import java.security.spec.ECGenParameterSpec;
import java.util.Arrays;
import java.util.Collections;
import javax.crypto.Cipher;
import javax.crypto.KeyGenerator;
import javax.crypto.SecretKey;
import javax.crypto.spec.GCMParameterSpec;

public class JavaFlow {
    public static void main(String[] args) throws Exception {
        String config = args[0];
        char[] pin = args[1].toCharArray();
        int rounds = Integer.parseInt(args[2]);
        boolean keygen = !(args.length > 3 && args[3].equals("--no-keygen"));
        Provider p = Security.getProvider("SunPKCS11").configure(config);
        Security.addProvider(p);
        System.out.println("provider: " + p.getName());

        KeyStore ks = KeyStore.getInstance("PKCS11", p);
        ks.load(null, pin);
        System.out.println("aliases: " + Collections.list(ks.aliases()));

        // The key keytool generated: sign with it on the token, verify with its certificate.
        byte[] data = "keytrail java flow".getBytes("UTF-8");
        PrivateKey stored = (PrivateKey) ks.getKey("java-ec", null);
        Certificate cert = ks.getCertificate("java-ec");
        for (int i = 0; i < rounds; i++) {
            Signature s = Signature.getInstance("SHA256withECDSA", p);
            s.initSign(stored);
            s.update(data);
            byte[] sig = s.sign();
            Signature v = Signature.getInstance("SHA256withECDSA");
            v.initVerify(cert);
            v.update(data);
            System.out.println("stored key signature verifies: " + v.verify(sig));
        }
        if (!keygen) {
            return;
        }

        // A new EC key pair (token objects: the configuration's attributes say so).
        KeyPairGenerator kpg = KeyPairGenerator.getInstance("EC", p);
        kpg.initialize(new ECGenParameterSpec("secp256r1"));
        KeyPair kp = kpg.generateKeyPair();
        System.out.println("generated: " + kp.getPrivate().getAlgorithm() + " "
                + kp.getPublic().getFormat());
        Signature s = Signature.getInstance("SHA256withECDSA", p);
        s.initSign(kp.getPrivate());
        s.update(data);
        byte[] sig = s.sign();
        Signature v = Signature.getInstance("SHA256withECDSA", p);
        v.initVerify(kp.getPublic());
        v.update(data);
        System.out.println("token verify: " + v.verify(sig));

        // AES-GCM with a key generated on the token.
        KeyGenerator kg = KeyGenerator.getInstance("AES", p);
        kg.init(256);
        SecretKey aes = kg.generateKey();
        byte[] iv = new byte[12];
        Arrays.fill(iv, (byte) 7);
        Cipher enc = Cipher.getInstance("AES/GCM/NoPadding", p);
        enc.init(Cipher.ENCRYPT_MODE, aes, new GCMParameterSpec(128, iv));
        enc.updateAAD("aad".getBytes("UTF-8"));
        byte[] ct = enc.doFinal(data);
        System.out.println("gcm ciphertext bytes: " + ct.length);
        Cipher dec = Cipher.getInstance("AES/GCM/NoPadding", p);
        dec.init(Cipher.DECRYPT_MODE, aes, new GCMParameterSpec(128, iv));
        dec.updateAAD("aad".getBytes("UTF-8"));
        System.out.println("gcm round trip: " + Arrays.equals(dec.doFinal(ct), data));
    }
}
