rockspec_format = "3.0"
package = "mailer"
version = "scm-1"
source = {
  url = "git+https://example.invalid/mailer.git",
}
description = {
  summary = "SMTP client and streaming MIME builder in C, with a Lua API",
  detailed = [[
mailer builds RFC 5322 / MIME messages from plain Lua tables (RFC 2047
headers, RFC 2231 file names, multipart alternative/related/mixed,
base64 and quoted-printable) and streams them in bounded memory.
It sends them over SMTP (STARTTLS or implicit TLS, verified; AUTH;
PIPELINING, CHUNKING, DKIM) with a blocking C socket, inside OpenResty
with cosockets, or inside an event loop, and through connection pools
with rate limits (mailer.pool).

Optional, not installed by this rock (Debian: lua-copas, lua-cqueues):
copas (socket = "copas"; mailer.pool runs its connections at once on
copas when it can be loaded) and cqueues (socket = "cqueues"). Neither
needs LuaSec or luaossl: TLS is mailer's own.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
}
external_dependencies = {
  OPENSSL = {
    header = "openssl/ssl.h",
    library = "ssl",
  },
  LIBIDN2 = {
    header = "idn2.h",
    library = "idn2",
  },
}
build = {
  type = "builtin",
  modules = {
    ["mailer"] = "lua/mailer.lua",
    ["mailer.smtp"] = "lua/mailer/smtp.lua",
    ["mailer.cli"] = "lua/mailer/cli.lua",
    ["mailer.resty"] = "lua/mailer/resty.lua",
    ["mailer.driver"] = "lua/mailer/driver.lua",
    ["mailer.queue"] = "lua/mailer/queue.lua",
    ["mailer.json"] = "lua/mailer/json.lua",
    ["mailer.pool"] = "lua/mailer/pool.lua",
    ["mailer.socket.loop"] = "lua/mailer/socket/loop.lua",
    ["mailer.socket.copas"] = "lua/mailer/socket/copas.lua",
    ["mailer.socket.cqueues"] = "lua/mailer/socket/cqueues.lua",
    ["mailer.core"] = {
      sources = {
        "csrc/lmailer.c", "csrc/lmailer_smtp.c", "csrc/lsocket.c", "csrc/mlr_common.c",
        "csrc/codec_base64.c", "csrc/codec_qp.c", "csrc/codec_dotstuff.c",
        "csrc/mime_header.c", "csrc/mime_addr.c", "csrc/mime_message.c",
        "csrc/smtp_reply.c", "csrc/smtp_engine.c", "csrc/auth.c", "csrc/transport.c",
        "csrc/dkim.c", "csrc/lmailer_queue.c", "csrc/waiter.c",
      },
      defines = { "_POSIX_C_SOURCE=200809L", "_DEFAULT_SOURCE" },
      incdirs = { "csrc", "$(OPENSSL_INCDIR)", "$(LIBIDN2_INCDIR)" },
      libdirs = { "$(OPENSSL_LIBDIR)", "$(LIBIDN2_LIBDIR)" },
      libraries = { "ssl", "crypto", "idn2" },
    },
  },
  install = {
    bin = { mailer = "bin/mailer" },
  },
}
