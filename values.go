package allot

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"golang.org/x/text/currency"
)

// DateLayout is the wire form of a date (seed 000 wanted exactly this).
const DateLayout = "2006-01-02"

// Date is a civil date without time zone, YYYY-MM-DD on the wire.
type Date struct{ t time.Time }

// ParseDate parses YYYY-MM-DD strictly.
func ParseDate(s string) (Date, error) {
	t, err := time.Parse(DateLayout, s)
	if err != nil {
		return Date{}, fmt.Errorf("%q is not a date of the form YYYY-MM-DD", s)
	}
	return Date{t}, nil
}

// DateOf is the civil date of t in t's location.
func DateOf(t time.Time) Date {
	y, m, d := t.Date()
	return Date{time.Date(y, m, d, 0, 0, 0, 0, time.UTC)}
}

// MustDate parses s or panics; for tests and constants.
func MustDate(s string) Date {
	d, err := ParseDate(s)
	if err != nil {
		panic(err)
	}
	return d
}

func (d Date) String() string     { return d.t.Format(DateLayout) }
func (d Date) AddDays(n int) Date { return Date{d.t.AddDate(0, 0, n)} }
func (d Date) Before(o Date) bool { return d.t.Before(o.t) }
func (d Date) IsZero() bool       { return d.t.IsZero() }

// Time is the start of the date in UTC.
func (d Date) Time() time.Time              { return d.t }
func (d Date) DaysUntil(o Date) int         { return int(o.t.Sub(d.t).Hours() / 24) }
func (d Date) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d *Date) UnmarshalText(b []byte) error {
	p, err := ParseDate(string(b))
	if err != nil {
		return err
	}
	*d = p
	return nil
}

// UnmarshalJSON reads "YYYY-MM-DD". A bad value is a *json.UnmarshalTypeError,
// which the decoder annotates with the field's path (lines.check_in).
func (d *Date) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		if p, err := ParseDate(s); err == nil {
			*d = p
			return nil
		}
	}
	return &json.UnmarshalTypeError{Value: string(b), Type: reflect.TypeFor[Date]()}
}

// Nights lists the nights of a stay: check-in up to, not including, check-out.
func Nights(checkIn, checkOut Date) []string {
	n := checkIn.DaysUntil(checkOut)
	out := make([]string, 0, max(n, 0))
	for i := 0; i < n; i++ {
		out = append(out, checkIn.AddDays(i).String())
	}
	return out
}

// Money is an exact decimal amount in a currency: Minor units at Scale
// decimal places (120.00 EUR is {12000, 2, "EUR"}). It never uses floats.
type Money struct {
	Minor    int64
	Scale    int
	Currency string
}

// MaxMoneyScale bounds the decimal places an amount may have.
const MaxMoneyScale = 6

// ParseMoney parses a non-negative decimal string like "120.00" and an ISO
// 4217-shaped currency code. An amount in a currency ISO 4217 lists may not
// be finer than its minor unit ("12.505" EUR, "10.5" JPY): no payment could
// charge it. Zeros past the minor unit are dropped ("12.500" EUR is 12.50).
// Codes ISO 4217 does not list (BTC, loyalty points) take up to
// MaxMoneyScale decimals.
func ParseMoney(amount, code string) (Money, error) {
	if len(code) != 3 || strings.ToUpper(code) != code || strings.ContainsFunc(code, func(r rune) bool { return r < 'A' || r > 'Z' }) {
		return Money{}, fmt.Errorf("currency %q is not a three-letter upper-case ISO 4217 code", code)
	}
	whole, frac, hasDot := strings.Cut(amount, ".")
	if whole == "" || len(whole) > 12 || (hasDot && (frac == "" || len(frac) > MaxMoneyScale)) || !digits(whole) || !digits(frac) {
		return Money{}, fmt.Errorf("amount %q is not a non-negative decimal with at most 12 integer digits and %d decimals, such as \"120.00\"", amount, MaxMoneyScale)
	}
	if u, err := currency.ParseISO(code); err == nil {
		if scale, _ := currency.Standard.Rounding(u); len(frac) > scale {
			if strings.Trim(frac[scale:], "0") != "" {
				return Money{}, fmt.Errorf("amount %q has more decimals than %s has (%d): %s amounts are in whole %s", amount, code, scale, code, minorUnit(scale))
			}
			frac = frac[:scale]
		}
	}
	v, _ := strconv.ParseInt(whole+frac, 10, 64)
	return Money{Minor: v, Scale: len(frac), Currency: code}, nil
}

// minorUnit names the smallest amount at a scale, for error messages.
func minorUnit(scale int) string {
	if scale == 0 {
		return "units"
	}
	return "multiples of 0." + strings.Repeat("0", scale-1) + "1"
}

func digits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// Amount formats the decimal amount with its scale.
func (m Money) Amount() string {
	s := strconv.FormatInt(m.Minor, 10)
	if m.Scale == 0 {
		return s
	}
	if len(s) <= m.Scale {
		s = strings.Repeat("0", m.Scale-len(s)+1) + s
	}
	return s[:len(s)-m.Scale] + "." + s[len(s)-m.Scale:]
}

// ErrMoneyOverflow is returned when an amount outgrows int64 minor units.
var ErrMoneyOverflow = errors.New("amount too large")

// mul multiplies non-negative amounts, refusing overflow.
func mul(a, b int64) (int64, error) {
	if a < 0 || b < 0 || (a != 0 && b > math.MaxInt64/a) {
		return 0, ErrMoneyOverflow
	}
	return a * b, nil
}

// Times multiplies by a non-negative whole number.
func (m Money) Times(n int) (Money, error) {
	v, err := mul(m.Minor, int64(n))
	m.Minor = v
	return m, err
}

// Add adds two amounts of the same currency, keeping the larger scale.
func (m Money) Add(o Money) (Money, error) {
	if m.Currency != o.Currency {
		return Money{}, fmt.Errorf("cannot add %s to %s", o.Currency, m.Currency)
	}
	var err error
	for m.Scale < o.Scale && err == nil {
		m.Minor, err = mul(m.Minor, 10)
		m.Scale++
	}
	for o.Scale < m.Scale && err == nil {
		o.Minor, err = mul(o.Minor, 10)
		o.Scale++
	}
	if err != nil || m.Minor > math.MaxInt64-o.Minor {
		return Money{}, ErrMoneyOverflow
	}
	m.Minor += o.Minor
	return m, nil
}

type moneyJSON struct {
	Amount   string `json:"amount"`
	Currency string `json:"currency"`
}

func (m Money) MarshalJSON() ([]byte, error) {
	return json.Marshal(moneyJSON{m.Amount(), m.Currency})
}

func (m *Money) UnmarshalJSON(b []byte) error {
	var j struct{ Amount, Currency json.RawMessage }
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	var amount, code string
	if err := dec.Decode(&j); err != nil || json.Unmarshal(j.Amount, &amount) != nil || json.Unmarshal(j.Currency, &code) != nil {
		// Amounts are strings so that no float ever rounds one.
		return fmt.Errorf(`a price must be {"amount": "120.00", "currency": "EUR"}, the amount a string, not %.100s`, b)
	}
	p, err := ParseMoney(amount, code)
	if err != nil {
		return err
	}
	*m = p
	return nil
}
