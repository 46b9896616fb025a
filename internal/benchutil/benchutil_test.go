package benchutil

import (
	"testing"
	"time"
)

const report = `Running 10s test @ http://127.0.0.1:8080/bench
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.37ms    2.01ms  40.12ms   80.00%
    Req/Sec     8.72k   512.33     9.80k    70.00%
  Latency Distribution
     50%    3.37ms
     75%    4.10ms
     90%    5.02ms
     99%  950.00us
  173440 requests in 10.00s, 30.11MB read
  Socket errors: connect 0, read 2, write 1, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  17344.12
Transfer/sec:      3.01MB
`

func TestParseWrk(t *testing.T) {
	r, err := ParseWrk(report)
	if err != nil {
		t.Fatal(err)
	}
	want := Wrk{RPS: 17344.12, P50: 3370 * time.Microsecond, P99: 950 * time.Microsecond, Requests: 173440,
		SocketErrors: 7, SocketErrorsLine: "Socket errors: connect 0, read 2, write 1, timeout 4", Non2xx: 5}
	if r != want {
		t.Errorf("ParseWrk = %+v\nwant        %+v", r, want)
	}
	if _, err := ParseWrk("unable to connect to 127.0.0.1:8080 Connection refused"); err == nil {
		t.Error("a report without Requests/sec parsed")
	}
}

func TestMedian(t *testing.T) {
	v := []float64{5, 1, 3, 2}
	if got := Median(v); got != 2.5 {
		t.Errorf("Median(%v) = %v, want 2.5", v, got)
	}
	if v[0] != 5 {
		t.Error("Median reordered its argument")
	}
	if Median([]float64{4, 1, 9}) != 4 || Median(nil) != 0 {
		t.Error("odd-length or empty median wrong")
	}
}
