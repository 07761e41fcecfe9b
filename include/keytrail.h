/*
 * keytrail.h — what libkeytrail.so exports beyond the PKCS#11 API.
 *
 * libkeytrail.so is a PKCS#11 module (load it where you would load your HSM's module);
 * these functions let an application add its own context to the audit trail.
 */
#ifndef KEYTRAIL_H
#define KEYTRAIL_H

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Tags the calling thread: every later audit record written for a PKCS#11 call made on
 * this thread carries labels.<key> = <value> (for example the end user or request id the
 * thread acts for). Setting a key again replaces its value; value NULL removes the key.
 * key and value are NUL-terminated UTF-8, at most 256 bytes each; a thread holds at most
 * 16 labels. Labels are per thread and are not secret-filtered: never put a secret here.
 * Returns 0 on success, -1 on bad input (NULL or empty key, invalid UTF-8, limits).
 */
int keytrail_set_context(const char *key, const char *value);

/*
 * Removes every label from the calling thread.
 */
void keytrail_clear_context(void);

/*
 * keytrail's version ("0.1.0"), a static string.
 */
const char *keytrail_version(void);

#ifdef __cplusplus
}
#endif

#endif /* KEYTRAIL_H */
