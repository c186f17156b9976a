/* url: server URLs printed without the password or token they may carry. */
#include "nats_auth.h"
#include "url.h"

#include <criterion/criterion.h>

#include <string.h>

static void expect_redacted(const char *url, const char *want)
{
    char buf[256];
    url_redact(url, buf, sizeof(buf));
    cr_assert_str_eq(buf, want, "url_redact(\"%s\")", url);
}

Test(url, redacts_passwords_and_tokens)
{
    expect_redacted("nats://relay:s3cret@host:4222", "nats://relay:***@host:4222");
    expect_redacted("nats://T0KEN@host", "nats://***@host");
    expect_redacted("nats://T0KEN:@host", "nats://***@host"); /* nats.c: a token */
    expect_redacted("nats://:s3cret@host", "nats://:***@host");
    expect_redacted("tls://relay:s3cret@nats.example.com:4443",
                    "tls://relay:***@nats.example.com:4443");
    expect_redacted("ws://relay:s3cret@host:8080/path", "ws://relay:***@host:8080/path");
    expect_redacted("wss://T0KEN@host", "wss://***@host");
}

Test(url, leaves_urls_without_credentials_alone)
{
    expect_redacted("nats://127.0.0.1:4222", "nats://127.0.0.1:4222");
    expect_redacted("nats://[::1]:4222", "nats://[::1]:4222");
    expect_redacted("127.0.0.1:4222", "127.0.0.1:4222");
    expect_redacted("nats://@host", "nats://@host");
    expect_redacted("", "");
}

Test(url, odd_urls_never_show_the_secret)
{
    expect_redacted("relay:s3cret@host:4222", "relay:***@host:4222"); /* no scheme */
    expect_redacted("T0KEN@host", "***@host");
    expect_redacted("nats://u:p@[::1]:4222", "nats://u:***@[::1]:4222");
    expect_redacted("nats://T0KEN@[fe80::1%eth0]:4222", "nats://***@[fe80::1%eth0]:4222");
    /* nats.c splits the userinfo at the last '@' and the user at the first ':'. */
    expect_redacted("nats://relay:p@ss:w@rd@host", "nats://relay:***@host");
    expect_redacted("nats://relay:a:b,c@host", "nats://relay:***@host");
    /* Given as one URL, a list is one URL to nats.c too: all of it up to the last '@'
     * would be sent as the password. */
    expect_redacted("nats://relay:s3cret@h1:4222,nats://T0KEN@h2:4222", "nats://relay:***@h2:4222");
}

Test(url, truncates_without_showing_the_secret)
{
    char buf[16];
    url_redact("nats://relay:s3cret@host:4222", buf, sizeof(buf));
    cr_assert_str_eq(buf, "nats://relay:**");
    url_redact("nats://T0KEN@host", buf, 1);
    cr_assert_str_eq(buf, "");
}

Test(url, redacts_a_list)
{
    const char *urls[] = {"nats://relay:s3cret@h1:4222", "nats://h2:4222", "nats://T0KEN@h3"};
    char buf[256];
    url_redact_list(urls, 3, buf, sizeof(buf));
    cr_assert_str_eq(buf, "nats://relay:***@h1:4222,nats://h2:4222,nats://***@h3");
    url_redact_list(urls, 3, buf, 20);
    cr_assert_str_eq(buf, "nats://relay:***@h1");
    url_redact_list(urls, 0, buf, sizeof(buf));
    cr_assert_str_eq(buf, "");
}

Test(url, redacts_urls_inside_text)
{
    char buf[256];
    url_redact_text("cannot reach nats://relay:s3cret@h1:4222 (refused), nor tls://T0KEN@h2", buf,
                    sizeof(buf));
    cr_assert_str_eq(buf, "cannot reach nats://relay:***@h1:4222 (refused), nor tls://***@h2");
    url_redact_text("error=\"nats://u:p@h\" and an e-mail a@b.c", buf, sizeof(buf));
    cr_assert_str_eq(buf, "error=\"nats://u:***@h\" and an e-mail a@b.c");
    url_redact_text("Authorization Violation", buf, sizeof(buf));
    cr_assert_str_eq(buf, "Authorization Violation");
}

Test(url, auth_kind)
{
    char user[64];
    cr_assert_eq(url_auth("nats://relay:s3cret@host", user, sizeof(user)), URL_AUTH_USER);
    cr_assert_str_eq(user, "relay");
    cr_assert_eq(url_auth("relay:s3cret@host", user, sizeof(user)), URL_AUTH_USER);
    cr_assert_str_eq(user, "relay");
    cr_assert_eq(url_auth("nats://T0KEN@host", user, sizeof(user)), URL_AUTH_TOKEN);
    cr_assert_str_eq(user, "");
    cr_assert_eq(url_auth("nats://T0KEN:@host", user, sizeof(user)), URL_AUTH_TOKEN);
    cr_assert_eq(url_auth("nats://:s3cret@host", user, sizeof(user)), URL_AUTH_PASSWORD_ONLY);
    cr_assert_eq(url_auth("nats://host:4222", user, sizeof(user)), URL_AUTH_NONE);
    cr_assert_eq(url_auth("nats://@host", user, sizeof(user)), URL_AUTH_NONE);
    cr_assert_eq(url_auth("nats://[::1]:4222", user, sizeof(user)), URL_AUTH_NONE);
}

Test(url, describe_names_the_credentials_of_a_server_url)
{
    char buf[160];
    struct nats_auth none = {0}, tls = {.tls_required = true};
    const char *user[] = {"nats://h1:4222", "nats://relay:s3cret@h2:4222"};
    nats_auth_describe_servers(&none, user, 2, buf, sizeof(buf));
    cr_assert_str_eq(buf, "user relay in the server URL");
    const char *token[] = {"tls://T0KEN@h1:4222"};
    nats_auth_describe_servers(&tls, token, 1, buf, sizeof(buf));
    cr_assert_str_eq(buf, "token in the server URL, tls");
    const char *plain[] = {"nats://h1:4222"};
    struct nats_auth settings = {.user = "relay", .password = "s3cret"};
    nats_auth_describe_servers(&settings, plain, 1, buf, sizeof(buf));
    cr_assert_str_eq(buf, "user relay");
}
