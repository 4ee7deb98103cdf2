#!/usr/bin/perl
# Turns a raw serial console stream into plain text lines, unbuffered: drops ANSI
# escape sequences and CRs, and starts a new line whenever an sgabios cursor move
# (ESC[row;colH) changes row, since sgabios draws the screen instead of sending
# newlines.
use strict;
use warnings;
$| = 1;
my ($pend, $row) = ('', -1);
while (sysread(STDIN, my $buf, 4096)) {
    $buf = $pend . $buf;
    $pend = '';
    if ($buf =~ s/(\e(?:\[[0-9;?=]*)?)\z//) { $pend = $1; }
    my $out = '';
    while ($buf =~ /\G(?:\e\[([0-9]+)(?:;[0-9]+)?H|\e\[[0-9;?=]*[A-Za-z]|\e.|([^\e]+))/gcs) {
        if (defined $1) {
            $out .= "\n" if $1 != $row && $row != -1;
            $row = $1;
        } elsif (defined $2) {
            (my $t = $2) =~ tr/\r//d;
            $out .= $t;
        }
    }
    print $out;
}
