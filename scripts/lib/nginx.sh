# nginx as a throw-away process on loopback for the checks. Sourced, not run.

# shellcheck source=tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"

# Prints the path of an nginx: the one on PATH, or else Debian's nginx package unpacked into
# TOOLS_DIR (scripts/install-tools.sh: not installed, so no system service is started).
nginx_binary() {
  if command -v nginx; then return 0; fi
  install_tools nginx >&2
  echo "$TOOLS_DIR/nginx/usr/sbin/nginx"
}

# Writes DIR/nginx.conf: nginx in the foreground on 127.0.0.1:PORT, every file it writes in DIR,
# UPSTREAM (the text of an `upstream fupload { ... }` block) in the http block and SITE included
# in the server block.
#   nginx_config DIR PORT SITE UPSTREAM
nginx_config() {
  local dir="$1" port="$2" site="$3" upstream="$4"
  mkdir -p "$dir/nginx-tmp"
  # The worker runs as nobody when nginx starts as root.
  chmod 755 "$dir"
  chmod 777 "$dir/nginx-tmp"
  cat > "$dir/nginx.conf" <<NGINX
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 256; }
http {
    # Which node answered each request, for the checks that balance several.
    log_format upstream '\$status \$upstream_addr "\$request" \$request_time';
    access_log $dir/nginx-access.log upstream;
    client_body_temp_path $dir/nginx-tmp/body;
    proxy_temp_path $dir/nginx-tmp/proxy;
    fastcgi_temp_path $dir/nginx-tmp/fastcgi;
    uwsgi_temp_path $dir/nginx-tmp/uwsgi;
    scgi_temp_path $dir/nginx-tmp/scgi;
    $upstream
    server {
        listen 127.0.0.1:$port;
        include $site;
    }
}
NGINX
}

# Checks DIR/nginx.conf and starts NGINX on it in the background; sets NGINX_PID.
#   nginx_start NGINX DIR
nginx_start() {
  "$1" -t -q -p "$2" -e "$2/nginx-error.log" -c "$2/nginx.conf"
  "$1" -p "$2" -e "$2/nginx-error.log" -c "$2/nginx.conf" &
  NGINX_PID=$!
}
