/* An nkey is a base32 text of: prefix byte(s), 32 key bytes, CRC-16 (XMODEM, little
 * endian). A seed's two prefix bytes say "seed" and the key type (U for users); its key
 * bytes are an Ed25519 private seed, whose public half OpenSSL computes. */
#include "nkey.h"

#include "secret.h"
#include "xalloc.h"

#include <openssl/evp.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    PREFIX_SEED = 18 << 3, /* 'S' */
    PREFIX_USER = 20 << 3, /* 'U' */
    SEED_TEXT_LEN = 58,    /* base32 of 2 + 32 + 2 bytes */
    SEED_RAW_LEN = 36,
    PUBLIC_RAW_LEN = 35, /* 1 + 32 + 2 */
};

static const char base32_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

static uint16_t crc16(const unsigned char *data, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)(data[i] << 8);
        for (int bit = 0; bit < 8; bit++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

/* Decodes exactly len base32 characters into out (cap bytes); returns the byte count,
 * or -1 on a character outside the alphabet. Leftover bits (< 8) are dropped. */
static int base32_decode(const char *text, size_t len, unsigned char *out, size_t cap)
{
    uint32_t bits = 0;
    int nbits = 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        const char *at = text[i] ? strchr(base32_alphabet, text[i]) : NULL;
        if (!at)
            return -1;
        bits = (bits << 5) | (uint32_t)(at - base32_alphabet);
        nbits += 5;
        if (nbits >= 8) {
            nbits -= 8;
            if (n == cap)
                return -1;
            out[n++] = (unsigned char)(bits >> nbits);
        }
    }
    return (int)n;
}

static void base32_encode(const unsigned char *data, size_t len, char *out)
{
    uint32_t bits = 0;
    int nbits = 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        bits = (bits << 8) | data[i];
        nbits += 8;
        while (nbits >= 5) {
            nbits -= 5;
            out[n++] = base32_alphabet[(bits >> nbits) & 31];
        }
    }
    if (nbits > 0)
        out[n++] = base32_alphabet[(bits << (5 - nbits)) & 31];
    out[n] = '\0';
}

/* The first line that is, once trimmed, SEED_TEXT_LEN characters starting "S". */
static const char *find_seed(const char *text, size_t len)
{
    const char *end = text + len;
    for (const char *line = text; line < end;) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        const char *stop = eol ? eol : end;
        const char *a = line, *b = stop;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r'))
            b--;
        if (b - a == SEED_TEXT_LEN && a[0] == 'S')
            return a;
        line = eol ? eol + 1 : end;
    }
    return NULL;
}

static int public_of(const unsigned char *seed32, unsigned char *pub32)
{
    EVP_PKEY *key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed32, 32);
    size_t len = 32;
    int ok = key && EVP_PKEY_get_raw_public_key(key, pub32, &len) == 1 && len == 32;
    EVP_PKEY_free(key);
    return ok ? 0 : -1;
}

int nkey_public_from_seed(const char *text, size_t len, char pub[NKEY_PUBLIC_LEN + 1], char **err)
{
    unsigned char raw[SEED_RAW_LEN];
    const char *seed = find_seed(text, len);
    int rc = -1;
    if (!seed) {
        *err = xasprintf("no nkey seed (a line of %d characters starting with S)", SEED_TEXT_LEN);
        return -1;
    }
    if (base32_decode(seed, SEED_TEXT_LEN, raw, sizeof(raw)) != SEED_RAW_LEN) {
        *err = xasprintf("the nkey seed is not valid base32");
        goto done;
    }
    uint16_t want = (uint16_t)(raw[SEED_RAW_LEN - 2] | raw[SEED_RAW_LEN - 1] << 8);
    if (crc16(raw, SEED_RAW_LEN - 2) != want) {
        *err = xasprintf("the nkey seed's checksum does not match (damaged or mistyped)");
        goto done;
    }
    int kind = (raw[0] & 0xf8), type = ((raw[0] & 7) << 5) | ((raw[1] & 0xf8) >> 3);
    if (kind != PREFIX_SEED || type != PREFIX_USER) {
        *err = xasprintf("the nkey seed is not a user seed (SU...)");
        goto done;
    }
    unsigned char out[PUBLIC_RAW_LEN];
    out[0] = PREFIX_USER;
    if (public_of(raw + 2, out + 1) != 0) {
        *err = xasprintf("cannot derive the public key of the nkey seed");
        goto done;
    }
    uint16_t crc = crc16(out, PUBLIC_RAW_LEN - 2);
    out[PUBLIC_RAW_LEN - 2] = (unsigned char)(crc & 0xff);
    out[PUBLIC_RAW_LEN - 1] = (unsigned char)(crc >> 8);
    base32_encode(out, PUBLIC_RAW_LEN, pub);
    rc = 0;
done:
    explicit_bzero(raw, sizeof(raw));
    return rc;
}

int nkey_public_from_file(const char *path, char pub[NKEY_PUBLIC_LEN + 1], char **err)
{
    char *problem = NULL;
    char *text = secret_read_file(path, &problem);
    if (!text) {
        *err = problem;
        return -1;
    }
    int rc = nkey_public_from_seed(text, strlen(text), pub, &problem);
    secret_free(text);
    if (rc != 0) {
        *err = xasprintf("%s: %s", path, problem);
        free(problem);
    }
    return rc;
}
