package allot

import (
	"encoding/json"
	"errors"
	"math"
	"testing"
)

func TestParseMoney(t *testing.T) {
	cases := []struct {
		amount, currency string
		ok               bool
		minor            int64
		scale            int
		out              string
	}{
		{"120.00", "EUR", true, 12000, 2, "120.00"},
		{"0.5", "USD", true, 5, 1, "0.5"},
		{"1200", "JPY", true, 1200, 0, "1200"},
		{"0.000001", "BTC", true, 1, 6, "0.000001"},
		{"-1", "EUR", false, 0, 0, ""},
		{"1.", "EUR", false, 0, 0, ""},
		{".5", "EUR", false, 0, 0, ""},
		{"1.0000001", "EUR", false, 0, 0, ""},
		{"1e3", "EUR", false, 0, 0, ""},
		{"1,50", "EUR", false, 0, 0, ""},
		{"1234567890123", "EUR", false, 0, 0, ""},
		{"1.00", "eur", false, 0, 0, ""},
		{"1.00", "EURO", false, 0, 0, ""},
		{"", "EUR", false, 0, 0, ""},
		{"12.505", "EUR", true, 12505, 3, "12.505"}, // read back as stored; Exact judges new prices
	}
	for _, c := range cases {
		m, err := ParseMoney(c.amount, c.currency)
		if (err == nil) != c.ok {
			t.Errorf("ParseMoney(%q, %q): err %v, want ok=%v", c.amount, c.currency, err, c.ok)
			continue
		}
		if c.ok && (m.Minor != c.minor || m.Scale != c.scale || m.Amount() != c.out) {
			t.Errorf("ParseMoney(%q) = %+v (%s)", c.amount, m, m.Amount())
		}
	}
}

func TestExact(t *testing.T) {
	cases := []struct {
		amount, currency string
		ok               bool
		out              string
	}{
		{"12.50", "EUR", true, "12.50"},
		{"12.500", "EUR", true, "12.50"},
		{"12.505", "EUR", false, ""},
		{"10", "JPY", true, "10"},
		{"10.0", "JPY", true, "10"},
		{"10.5", "JPY", false, ""},
		{"1.234", "BHD", true, "1.234"},
		{"1.2345", "BHD", false, ""},
		{"0.001", "IQD", true, "0.001"}, // ISO gives 3 decimals where CLDR gives 0
		{"1.50", "IDR", true, "1.50"},
		{"0.0001", "CLF", true, "0.0001"},
		{"0.125", "XAU", true, "0.125"},       // no minor unit in ISO 4217
		{"0.123456", "PTS", true, "0.123456"}, // not in ISO 4217
		{"0.000", "EUR", true, "0.00"},
		{"7", "EUR", true, "7"},
	}
	for _, c := range cases {
		m, err := ParseMoney(c.amount, c.currency)
		if err != nil {
			t.Fatalf("ParseMoney(%q, %q): %v", c.amount, c.currency, err)
		}
		x, err := m.Exact()
		if (err == nil) != c.ok || (c.ok && x.Amount() != c.out) {
			t.Errorf("%s %s exact: %s, %v; want ok=%v %s", c.amount, c.currency, x.Amount(), err, c.ok, c.out)
		}
	}
}

func TestMoneyArithmetic(t *testing.T) {
	a, _ := ParseMoney("99.50", "EUR")
	b, _ := ParseMoney("0.125", "EUR")
	three, err := a.Times(3)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := three.Add(b)
	if err != nil || sum.Amount() != "298.625" {
		t.Fatalf("3*99.50+0.125 = %s, %v", sum.Amount(), err)
	}
	big, _ := ParseMoney("999999999999.999999", "EUR")
	if _, err := big.Times(20); !errors.Is(err, ErrMoneyOverflow) {
		t.Fatalf("20 x %s: %v, want overflow", big.Amount(), err)
	}
	if _, err := big.Add(big); err != nil {
		t.Fatalf("%s + itself fits: %v", big.Amount(), err)
	}
	huge := Money{Minor: math.MaxInt64 - 1, Scale: 0, Currency: "EUR"}
	if _, err := huge.Add(b); !errors.Is(err, ErrMoneyOverflow) {
		t.Fatalf("rescaling %d: %v, want overflow", huge.Minor, err)
	}
	usd, _ := ParseMoney("1", "USD")
	if _, err := a.Add(usd); err == nil {
		t.Fatal("added USD to EUR")
	}
	j, _ := json.Marshal(a)
	var back Money
	if err := json.Unmarshal(j, &back); err != nil || back != a || string(j) != `{"amount":"99.50","currency":"EUR"}` {
		t.Fatalf("JSON round trip: %s -> %+v, %v", j, back, err)
	}
	for _, bad := range []string{`{"amount":99.5,"currency":"EUR"}`, `{"amount":"1","currency":"EUR","x":1}`, `"1 EUR"`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

func TestNights(t *testing.T) {
	cases := []struct {
		in, out string
		want    []string
	}{
		{"2027-02-27", "2027-03-02", []string{"2027-02-27", "2027-02-28", "2027-03-01"}},
		{"2028-02-28", "2028-03-01", []string{"2028-02-28", "2028-02-29"}},
		{"2027-12-31", "2028-01-01", []string{"2027-12-31"}},
		{"2027-03-28", "2027-03-29", []string{"2027-03-28"}},
		{"2027-01-02", "2027-01-02", []string{}},
	}
	for _, c := range cases {
		got := Nights(MustDate(c.in), MustDate(c.out))
		if len(got) != len(c.want) {
			t.Fatalf("Nights(%s, %s) = %v, want %v", c.in, c.out, got, c.want)
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Fatalf("Nights(%s, %s) = %v, want %v", c.in, c.out, got, c.want)
			}
		}
	}
	for _, bad := range []string{"2027-02-30", "27-01-01", "2027-1-1", "2027-01-01T00:00:00Z", ""} {
		if _, err := ParseDate(bad); err == nil {
			t.Errorf("ParseDate(%q) accepted", bad)
		}
	}
}

func TestStatusMachine(t *testing.T) {
	cases := []struct {
		from, to OrderStatus
		ok       bool
	}{
		{"", OrderReserved, true},
		{OrderReserved, OrderConfirmed, true},
		{OrderConfirmed, OrderNotified, true},
		{OrderAwaitingPayment, OrderPaymentFailed, true},
		{OrderReserved, OrderCancelled, true},
		{OrderNotified, OrderCancelled, true},
		{OrderCancelled, OrderReserved, false},
		{OrderNotified, OrderConfirmed, false},
		{OrderReserved, OrderPaymentFailed, false},
		{OrderRejected, OrderCancelled, false},
		{OrderExpired, OrderCancelled, false},
	}
	for _, c := range cases {
		if got := CanTransition(c.from, c.to); got != c.ok {
			t.Errorf("CanTransition(%q, %q) = %v", c.from, c.to, got)
		}
	}
	for _, s := range []OrderStatus{OrderCancelled, OrderRejected, OrderPaymentFailed, OrderExpired} {
		if s.Live() || !s.Valid() {
			t.Errorf("%s: live %v valid %v", s, s.Live(), s.Valid())
		}
	}
}
