"""Drives the test site: `python tool.py COMMAND ...` with the settings' environment set.

- setup: creates the tables and the users ann (staff), bob and carol;
- serve: serves the site on a free port of 127.0.0.1 and prints `port N`;
- set-password USER PASSWORD, set-active USER 0|1: changes a user as Django's admin would;
- cache-set KEY PICKLE_HEX: stores raw bytes in the cache's Redis under KEY (hostile values);
- sign: reads [{"salt", "value", "compress", "age"}] on stdin and prints what
  django.core.signing.dumps gives for each, signed `age` seconds ago.
"""

import json
import os
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core import signing  # noqa: E402
from django.core.management import call_command  # noqa: E402


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "setup":
        call_command("migrate", verbosity=0)
        User.objects.create_user("ann", password="ann-password", is_staff=True)
        User.objects.create_user("bob", password="bob-password")
        User.objects.create_user("carol", password="carol-password")
    elif command == "serve":
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from django.core.wsgi import get_wsgi_application

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):
                pass

        server = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=Quiet)
        print(f"port {server.server_port}", flush=True)
        server.serve_forever()
    elif command == "set-password":
        user = User.objects.get(username=args[0])
        user.set_password(args[1])
        user.save()
    elif command == "set-active":
        User.objects.filter(username=args[0]).update(is_active=args[1] == "1")
    elif command == "cache-set":
        import redis

        redis.Redis.from_url(os.environ["SITE_CACHE"]).set(args[0], bytes.fromhex(args[1]))
    elif command == "sign":
        out = []
        for case in json.load(sys.stdin):
            now = time.time() - case.get("age", 0)
            with mock.patch("time.time", return_value=now):
                out.append(signing.dumps(case["value"], salt=case["salt"], compress=case.get("compress", False)))
        print(json.dumps(out))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
