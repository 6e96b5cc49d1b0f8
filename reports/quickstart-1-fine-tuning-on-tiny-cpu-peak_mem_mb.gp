set terminal svg size 880,480 dynamic font 'sans,11'
set output "reports/quickstart-1-fine-tuning-on-tiny-cpu-peak_mem_mb.svg"
set title "Fine-tuning on tiny (CPU): Peak Mem (MB)"
set ylabel "Peak Mem (MB)"
set style fill solid 0.6 border -1
set boxwidth 0.6
set grid ytics
set key off
set bmargin 4
set yrange [0:30.057]
set xrange [-0.6:7.6]
set xtics ("GC off\nMP off\nLoRA off" 0, "GC off\nMP off\nLoRA on" 1, "GC off\nMP bf16\nLoRA off" 2, "GC off\nMP bf16\nLoRA on" 3, "GC on\nMP off\nLoRA off" 4, "GC on\nMP off\nLoRA on" 5, "GC on\nMP bf16\nLoRA off" 6, "GC on\nMP bf16\nLoRA on" 7)
plot "reports/quickstart-1-fine-tuning-on-tiny-cpu-peak_mem_mb.dat" using 1:($4 == 1 ? 1/0 : $2) with boxes lc rgb '#4472c4', '' using 1:($4 == 1 ? 1/0 : $2):(sprintf('%.3g', $2)) with labels offset 0,0.8, '' using 1:($4 == 1 ? 1.30682 : 1/0):3 with labels tc rgb 'red' font ',12'
