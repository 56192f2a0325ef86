# Sourced by the device scripts. wait_for_server PID LOG SECONDS: until the server on
# 127.0.0.1:30000 answers /health; stops at once if process PID exited, or after SECONDS,
# then prints LOG's tail, ends PID and returns 1.
wait_for_server() {
  local pid=$1 log=$2 limit=$3 waited=0
  until python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:30000/health", timeout=2)' 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null || [ $waited -ge "$limit" ]; then
      echo "server did not come up"; tail -n 40 "$log"; kill "$pid" 2>/dev/null
      return 1
    fi
    sleep 1; waited=$((waited + 1))
  done
}
