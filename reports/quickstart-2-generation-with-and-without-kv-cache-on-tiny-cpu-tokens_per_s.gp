set terminal svg size 640,480 dynamic font 'sans,11'
set output "reports/quickstart-2-generation-with-and-without-kv-cache-on-tiny-cpu-tokens_per_s.svg"
set title "Generation with and without KV cache on tiny (CPU): Throughput (tok/s)"
set ylabel "Throughput (tok/s)"
set style fill solid 0.6 border -1
set boxwidth 0.6
set grid ytics
set key off
set bmargin 3
set yrange [0:2053.65]
set xrange [-0.6:3.6]
set xtics ("KV cache on\nBatch 1" 0, "KV cache on\nBatch 4" 1, "KV cache off\nBatch 1" 2, "KV cache off\nBatch 4" 3)
plot "reports/quickstart-2-generation-with-and-without-kv-cache-on-tiny-cpu-tokens_per_s.dat" using 1:($4 == 1 ? 1/0 : $2) with boxes lc rgb '#4472c4', '' using 1:($4 == 1 ? 1/0 : $2):(sprintf('%.3g', $2)) with labels offset 0,0.8, '' using 1:($4 == 1 ? 89.2893 : 1/0):3 with labels tc rgb 'red' font ',12'
